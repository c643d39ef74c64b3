"""Evaluation cost: `llmforge eval` against `lm_eval.simple_evaluate` doing the same work, in one run.

Both evaluate the same randomly initialised Llama (preset `tiny`, ~1M parameters, or `--preset small`) with lm-eval's
Hugging Face backend on the bundled tasks (30 generation items scored two ways, 30 four-way multiple choice, 30
GRPO-style generations) and on perplexity over held-out text. What llmforge adds on top of lm-eval: resolving and
checking the model, loading the tasks once more before any model is loaded (to fail early), fingerprinting the
inputs, the lineage contamination check, writing results.json and the manifest.

    .venv/bin/python bench/bench_eval.py [--preset tiny] [--repeat 3] [--threads 1]

Prints one table; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import tempfile
import time
from pathlib import Path

from llmforge.artifacts import InputRef, canonical_hash, run_stage
from llmforge.config import StageConfig
from llmforge.evaluation.arithmetic import problems
from llmforge.evaluation.perplexity import perplexity_tasks
from llmforge.evaluation.tasks import TASKS_DIR
from llmforge.stages import eval as eval_stage


class BenchModel(StageConfig):
    """A random model standing in for a trained one (the cost of evaluating does not depend on the weights)."""

    preset: str = "tiny"


def prose(limit: int, pattern: str = "*.py") -> list[str]:
    """Real text from this machine: the Python standard library's module docstrings (of the files `pattern`
    matches: "**/*.py" takes the packages' modules too)."""
    texts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob(pattern)):
        text = path.read_text(encoding="utf-8", errors="ignore")
        if text.startswith('"""') and '"""' in text[3:]:
            texts.append(text[3 : text.index('"""', 3)].strip())
        if len(texts) >= limit:
            break
    return texts


def make_model(root: Path, preset: str) -> Path:
    from llmforge.data.tokenizer import train_tokenizer
    from llmforge.model.llama import build_config, build_model, special_ids_of
    from llmforge.model.loading import save_model_payload

    chats = [
        " ".join(p.question + " " + p.completion(reasoning) for p in problems("train"))
        for reasoning in (0, 1)
    ]
    tokenizer = train_tokenizer(prose(400) + chats, vocab_size=1024)

    def body(ctx):
        config = build_config(preset, len(tokenizer), special_ids_of(tokenizer), max_position_embeddings=1024)
        save_model_payload(build_model(config), tokenizer, ctx.work)

    ref = InputRef(path="(bench)", kind="raw", fingerprint=canonical_hash(preset))
    return run_stage("pretrain", "model", BenchModel(preset=preset), [ref], root / "model", body)


def plain_lm_eval(model: Path, tasks: list, batch_size: int) -> dict:
    """What a user of lm-eval alone writes for the same evaluation."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model), device="cpu", batch_size=batch_size)
    lm.model.generation_config.max_new_tokens = None  # as eval does, so both generate the same lengths
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, bootstrap_iters=1000,
                                   fewshot_random_seed=1234)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared machine)")
    parser.add_argument("--documents", type=int, default=200, help="held-out documents for perplexity")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = make_model(root, args.preset)
        held_out = root / "held_out.jsonl"
        held_out.write_text("".join(json.dumps({"text": t}) + "\n" for t in prose(400)[-args.documents :]))
        (ppl_task,), _ = perplexity_tasks([str(held_out)], args.documents, root)  # the same task
        workloads = {
            "bundled tasks": (eval_stage.Config(), ["llmforge"]),
            "perplexity": (eval_stage.Config(perplexity=[str(held_out)]), [ppl_task]),
        }
        timings: dict[tuple[str, str], list[float]] = {}
        scores = {}
        for attempt in range(args.repeat + 1):  # the first round warms imports and caches; not counted
            for name, (config, tasks) in workloads.items():
                start = time.perf_counter()
                out = eval_stage.run([str(model)], root / f"report-{name}-{attempt}", config)
                ours = time.perf_counter() - start
                start = time.perf_counter()
                theirs = plain_lm_eval(model, tasks, config.batch_size)
                plain = time.perf_counter() - start
                if attempt:
                    timings.setdefault((name, "llmforge eval"), []).append(ours)
                    timings.setdefault((name, "lm_eval.simple_evaluate"), []).append(plain)
                results = json.loads((out / "results.json").read_text())["results"]
                scores[name] = results == theirs["results"]

    print(f"\npreset {args.preset}, torch threads {args.threads}, best of {args.repeat}")
    print(f"{'workload':<16} {'what':<26} {'seconds':>8} {'vs lm-eval':>11}")
    for name in workloads:
        base = min(timings[(name, "lm_eval.simple_evaluate")])
        for what in ("lm_eval.simple_evaluate", "llmforge eval"):
            best = min(timings[(name, what)])
            print(f"{name:<16} {what:<26} {best:>8.2f} {base / best:>10.2f}x")
        print(f"{'':<16} same scores as lm-eval: {scores[name]}")


if __name__ == "__main__":
    main()
