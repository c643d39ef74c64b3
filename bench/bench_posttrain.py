"""Step time and peak memory: `llmforge sft/dpo/reward/grpo` against the same TRL trainer called directly.

Both sides train the same model (a random Llama of the chosen preset with a tokenizer trained here) on the same
records with the same settings; each run is its own process, so peak memory (max RSS on CPU, max CUDA memory on a
GPU) is that run's alone. Step time is the median wall time between optimizer steps after the first two; the
sides run interleaved `--repeat` times and the best step time of each is kept (the machine may be shared); the
process CPU time per step is reported beside it, as it suffers less from other work on a shared machine.

    .venv/bin/python bench/bench_posttrain.py [--preset small] [--steps 10] [--repeat 3] [--stages sft,dpo,reward,grpo]
        [--lora]

Prints one table; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SETTINGS = {"batch_size": 8, "max_length": 128, "learning_rate": 1e-4, "seed": 0, "warmup_ratio": 0.0}
GRPO = {"num_generations": 8, "max_completion_length": 16, "kl_beta": 0.04}


def prepare(root: Path, preset: str) -> tuple[Path, dict[str, Path]]:
    """A tokenizer, a random model of `preset` (as a model artifact) and one dataset per stage."""
    from helpers import (
        RandomInit,
        chat_records,
        grpo_records,
        preference_records,
        train_tiny_tokenizer,
        write_jsonl,
    )

    from llmforge.artifacts import InputRef, run_stage
    from llmforge.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from llmforge.model.llama import build_config, build_model, special_ids_of
    from llmforge.model.loading import save_model_payload

    tokenizer_dir = train_tiny_tokenizer(root / "tok", vocab_size=1024)
    tokenizer = load_tokenizer(tokenizer_dir)

    def body(ctx):
        config = build_config(preset, len(tokenizer), special_ids_of(tokenizer), max_position_embeddings=512)
        model = build_model(config, seed=0)
        save_model_payload(model, tokenizer, ctx.work)
        ctx.stats["parameters"] = sum(p.numel() for p in model.parameters())
        ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)

    ref = InputRef(path=str(tokenizer_dir), kind="raw", fingerprint=tokenizer_fingerprint(tokenizer_dir))
    model = run_stage("pretrain", "model", RandomInit(preset=preset), [ref], root / "model", body)
    data = {"sft": write_jsonl(root / "sft.jsonl", chat_records(512)),
            "dpo": write_jsonl(root / "dpo.jsonl", [_chat_answers(r) for r in preference_records(512)]),
            "reward": write_jsonl(root / "reward.jsonl", [_chat_answers(r) for r in preference_records(512)]),
            "grpo": write_jsonl(root / "grpo.jsonl", grpo_records(512))}  # fmt: skip
    return model, data


def _chat_answers(record: dict) -> dict:
    """TRL wants chosen/rejected as assistant messages when the prompt is a chat (llmforge converts strings)."""
    return {**record, **{k: [{"role": "assistant", "content": record[k]}] for k in ("chosen", "rejected")}}


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append((time.perf_counter(), time.process_time()))

    return StepTimer()


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_llmforge(stage: str, model: Path, data: Path, out: Path, steps: int, lora: bool, timer) -> None:
    import importlib

    from llmforge.train.posttrain import LoraSettings

    module = importlib.import_module(f"llmforge.stages.{stage}")
    extra = GRPO if stage == "grpo" else {}
    rewards = {"rewards": ["format"]} if stage == "grpo" else {}
    config = module.Config(**SETTINGS, **extra, **rewards, max_steps=steps, save_steps=10_000,
                           lora=LoraSettings(enabled=lora))  # fmt: skip
    module.run(model, data, out, config, callbacks=[timer])


def run_trl(stage: str, model_dir: Path, data: Path, out: Path, steps: int, lora: bool, timer) -> None:
    """What a user writes with TRL alone: the same trainer and settings, no llmforge in the loop."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    cpu = not torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if stage == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=str(data), split="train")
    task = "SEQ_CLS" if stage == "reward" else "CAUSAL_LM"
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                             task_type=task) if lora else None  # fmt: skip
    # TRL's configs default to gradient checkpointing; llmforge's default is off. The same seeds and schedule keep
    # GRPO's sampled completions (and so its step time) the same on both sides.
    common = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=SETTINGS["batch_size"],
                  learning_rate=SETTINGS["learning_rate"], seed=0, data_seed=0, lr_scheduler_type="cosine",
                  use_cpu=cpu, bf16=not cpu, report_to="none", save_strategy="no", logging_steps=1,
                  disable_tqdm=True, gradient_checkpointing=False)  # fmt: skip
    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=SETTINGS["max_length"], assistant_only_loss=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[timer])  # fmt: skip
    elif stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, max_length=SETTINGS["max_length"], beta=0.1)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[timer])  # fmt: skip
    elif stage == "reward":
        from trl import RewardConfig, RewardTrainer

        args = RewardConfig(**common, max_length=SETTINGS["max_length"])
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                peft_config=peft_config, callbacks=[timer])  # fmt: skip
    else:
        from trl import GRPOConfig, GRPOTrainer

        from llmforge.rewards.text import format_reward

        args = GRPOConfig(**common, num_generations=GRPO["num_generations"], beta=GRPO["kl_beta"],
                          max_completion_length=GRPO["max_completion_length"])  # fmt: skip
        trainer = GRPOTrainer(model=model, reward_funcs=[format_reward], args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])  # fmt: skip
    trainer.train()


def worker(side: str, stage: str, model: Path, data: Path, out: Path, steps: int, lora: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    timer = step_timer()
    started = time.perf_counter()
    (run_llmforge if side == "llmforge" else run_trl)(stage, model, data, out, steps, lora, timer)
    wall = [b[0] - a[0] for a, b in zip(timer.times[1:], timer.times[2:], strict=False)]
    cpu = [b[1] - a[1] for a, b in zip(timer.times[1:], timer.times[2:], strict=False)]
    print(json.dumps({"step_s": statistics.median(wall), "step_cpu_s": statistics.median(cpu),
                      "peak_mb": peak_memory_mb(), "total_s": time.perf_counter() - started}))  # fmt: skip


def measure(side: str, stage: str, model: Path, data: Path, out: Path, steps: int, lora: bool) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--stage", stage, "--model", str(model), "--data",
               str(data), "--out", str(out), "--steps", str(steps)] + (["--lora"] if lora else [])  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if result.returncode != 0:
        raise SystemExit(f"{side} {stage} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--stages", default="sft,dpo,reward,grpo")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved runs per side (best step time kept)"
    )
    parser.add_argument("--worker", choices=["llmforge", "trl"])
    parser.add_argument("--stage")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.stage, args.model, args.data, args.out, args.steps, args.lora)
        return

    with tempfile.TemporaryDirectory(prefix="bench-posttrain-") as tmp:
        root = Path(tmp)
        # run_stage prints the prepared model's path: stdout carries the table alone
        with contextlib.redirect_stdout(sys.stderr):
            model, data = prepare(root, args.preset)
        print(f"preset {args.preset}, {'LoRA' if args.lora else 'full'}, {args.steps} steps, batch "
              f"{SETTINGS['batch_size']}, device {'cuda' if _cuda() else 'cpu'}", file=sys.stderr)  # fmt: skip
        print("| stage | llmforge step | TRL step | ratio | llmforge CPU/step | TRL CPU/step | ratio "
              "| llmforge peak MB | TRL peak MB | ratio |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for stage in args.stages.split(","):
            runs = {"llmforge": [], "trl": []}
            for repeat in range(
                args.repeat
            ):  # interleaved, alternating who goes first: the machine is shared
                order = ("llmforge", "trl") if repeat % 2 == 0 else ("trl", "llmforge")
                for side in order:
                    out = root / f"{stage}-{side}-{repeat}"
                    runs[side].append(measure(side, stage, model, data[stage], out, args.steps, args.lora))
            ours, theirs = best(runs["llmforge"]), best(runs["trl"])
            print(f"| {stage} | {ours['step_s'] * 1000:.0f} ms | {theirs['step_s'] * 1000:.0f} ms | "
                  f"{ours['step_s'] / theirs['step_s']:.2f}x | {ours['step_cpu_s'] * 1000:.0f} ms | "
                  f"{theirs['step_cpu_s'] * 1000:.0f} ms | {ours['step_cpu_s'] / theirs['step_cpu_s']:.2f}x | "
                  f"{ours['peak_mb']:.0f} | {theirs['peak_mb']:.0f} | {ours['peak_mb'] / theirs['peak_mb']:.2f}x |",
                  flush=True)  # fmt: skip


def best(runs: list[dict]) -> dict:
    """The fastest run's step times (the least disturbed by other work) and the median peak memory."""
    return {"step_s": min(r["step_s"] for r in runs), "step_cpu_s": min(r["step_cpu_s"] for r in runs),
            "peak_mb": statistics.median(r["peak_mb"] for r in runs)}  # fmt: skip


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
