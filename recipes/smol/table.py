"""The smol recipe's side-by-side table: held-out exact match after each stage (and of the GGUF, on llama.cpp), the
quantized models' perplexity (INT8, INT4 and the GGUF) on held-out English text, the served answer, and the wall
time of each stage.

Usage: python table.py RUNS/seed-0 [RUNS/seed-1 ...]   (one seed: its figures; several: mean, spread and range)
The base model's eval is shared by the seeds: RUNS/eval-base.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

TASK = "smol_arith"
ROWS = [  # (label, artifact under the seed dir or RUNS, what to read)
    ("base  exact match, final number", "../eval-base", ("score", "final-number")),
    ("base  exact match, in format", "../eval-base", ("score", "in-format")),
    ("sft   exact match, final number", "eval-sft", ("score", "final-number")),
    ("sft   exact match, in format", "eval-sft", ("score", "in-format")),
    ("grpo  exact match, final number", "eval-grpo", ("score", "final-number")),
    ("grpo  exact match, in format", "eval-grpo", ("score", "in-format")),
    ("grpo  perplexity (English text)", "int8", ("stat", "perplexity_before")),
    ("int8  perplexity delta %", "int8", ("stat", "perplexity_delta_pct")),
    ("int4  perplexity delta %", "int4", ("stat", "perplexity_delta_pct")),
    ("gguf  Q4_K_M perplexity delta %", "gguf", ("stat", "perplexity_delta_pct")),
    ("gguf  Q4_K_M exact match, final number", "eval-gguf", ("score", "final-number")),
    ("gguf  Q4_K_M exact match, in format", "eval-gguf", ("score", "in-format")),
]
STAGES = ["../base", "../eval-base", "sft", "eval-sft", "grpo", "eval-grpo"]
STAGES += ["int8", "int4", "gguf", "eval-gguf"]


def manifest(seed_dir: Path, name: str) -> dict:
    return json.loads((seed_dir / name / "artifact.json").read_text())


def figure(seed_dir: Path, name: str, what: tuple[str, str]) -> float:
    stats = manifest(seed_dir, name)["stats"]
    kind, key = what
    return stats["scores"][TASK][f"exact_match,{key}"] if kind == "score" else stats[key]


def main() -> None:
    seed_dirs = [Path(p) for p in sys.argv[1:]]
    if not seed_dirs:
        sys.exit("usage: python table.py RUNS/seed-N [...]")
    many = len(seed_dirs) > 1
    head = f"{'':40}" + (
        f"{'mean':>8} {'sd':>7} {'min':>8} {'max':>8}   n={len(seed_dirs)}" if many else f"{'value':>8}"
    )
    lines = [f"smol recipe: SmolLM2-135M-Instruct, {', '.join(d.name for d in seed_dirs)}", head]
    for label, name, what in ROWS:
        values = [figure(d, name, what) for d in seed_dirs]
        if many:
            sd = statistics.stdev(values)
            lines.append(
                f"{label:40}{statistics.mean(values):8.3f} {sd:7.3f} {min(values):8.3f} {max(values):8.3f}"
            )
        else:
            lines.append(f"{label:40}{values[0]:8.3f}")
    seconds = {
        s.removeprefix("../"): [manifest(d, s)["provenance"]["seconds"] for d in seed_dirs] for s in STAGES
    }
    lines.append("wall seconds: " + ", ".join(f"{s} {statistics.mean(v):.0f}" for s, v in seconds.items()))
    for d in seed_dirs:
        answer = d / "answer.json"
        if answer.is_file():
            record = json.loads(answer.read_text())
            lines.append(f"served ({d.name}): {record['question']} -> {record['answer']!r}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
