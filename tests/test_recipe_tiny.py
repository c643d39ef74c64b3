"""recipes/tiny: its configs load through the stages' own config models, its generated data never holds an eval
item, its reward scores what it says, and the Makefile chains every stage with its config. The whole recipe runs
as `make demo` (about 5 minutes); the figures it printed are in README.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmforge.config import load_config
from llmforge.evaluation.arithmetic import problems
from llmforge.stages import crawl_filter, dedup, dpo, eval, grpo, pretrain, quantize, reward, sft, tokenize

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny"
CONFIGS = {
    "crawl-filter.yaml": crawl_filter.Config,
    "dedup.yaml": dedup.Config,
    "tokenizer.yaml": tokenize.TrainConfig,
    "tokens.yaml": tokenize.EncodeConfig,
    "pretrain.yaml": pretrain.Config,
    "sft.yaml": sft.Config,
    "dpo.yaml": dpo.Config,
    "reward.yaml": reward.Config,
    "grpo.yaml": grpo.Config,
    "eval.yaml": eval.Config,
    "quantize.yaml": quantize.Config,
}


def test_every_config_loads():
    assert sorted(p.name for p in (RECIPE / "configs").glob("*.yaml")) == sorted(CONFIGS)
    configs = {name: load_config(model, RECIPE / "configs" / name) for name, model in CONFIGS.items()}
    # decontamination and the eval's overlap check must see the 4-word arithmetic questions, numbers included
    assert (
        configs["dedup.yaml"].decontamination.ngram,
        configs["dedup.yaml"].decontamination.keep_numbers,
    ) == (4, True)
    assert configs["eval.yaml"].contamination.ngram == 4 and configs["eval.yaml"].contamination.keep_numbers
    rl = configs["grpo.yaml"]
    assert rl.batch_size % rl.num_generations == 0


def test_task_data_never_holds_an_eval_item(tmp_path):
    subprocess.run(
        [sys.executable, str(RECIPE / "make_tasks.py"), str(tmp_path)], check=True, capture_output=True
    )
    held_out = {p.question for p in problems("eval")}
    seen = {}
    for name in ("sft", "dpo", "grpo"):
        records = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        questions = [(r.get("messages") or r["prompt"])[0]["content"] for r in records]
        assert held_out.isdisjoint(questions)
        seen[name] = set(questions)
    assert seen["sft"] == seen["dpo"] == seen["grpo"] == {p.question for p in problems("train")}


def test_closeness_reward():
    sys.path.insert(0, str(RECIPE))
    try:
        from rewards import closeness
    finally:
        sys.path.remove(str(RECIPE))
    replies = [[{"role": "assistant", "content": text}] for text in ("13", "12", "15", "no idea")]
    assert closeness(replies, ["13"] * 4) == [1.0, 0.5, 0.25, 0.0]


@pytest.mark.timeout(60)
def test_makefile_chains_every_stage(tmp_path):
    """`make -n` prints the commands a fresh run executes: every stage, each with its config, in order."""
    result = subprocess.run(["make", "-n", "-C", str(RECIPE), f"RUNS={tmp_path}/runs", "LLMFORGE=llmforge",
                             f"PYTHON={sys.executable}"], capture_output=True, text=True, check=True)  # fmt: skip
    commands = [line for line in result.stdout.splitlines() if line.startswith("llmforge ")]
    stages = [re.match(r"llmforge ((?:tokenize )?[a-z-]+)", c).group(1) for c in commands]
    training = [s for s in stages if s in ("pretrain", "sft", "dpo", "grpo", "quantize", "reward")]
    assert training == [
        "pretrain",
        "sft",
        "dpo",
        "grpo",
        "quantize",
        "reward",
    ]  # the reward model on the side
    assert stages[:4] == ["crawl-filter", "dedup", "tokenize train", "tokenize encode"]
    assert stages.count("eval") == 6  # after each training stage and of the quantized model, then --compare
    assert all("--update -c configs/" in c for c in commands if " --compare " not in c and " card " not in c)
    assert "--decontaminate" in next(c for c in commands if c.startswith("llmforge dedup"))
    assert any(line.endswith(f"ask.py llmforge {tmp_path}/runs/quantized \"What is 3 + 4?\" {tmp_path}/runs/answer.json")
               for line in result.stdout.splitlines())  # fmt: skip
