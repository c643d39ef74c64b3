"""recipes/smol: its configs load through the stages' own config models, its generator never puts a held-out
problem's arithmetic into training data, the shipped held-out file is the generator's, its task config parses and
its filters read the final number, and the Makefile chains every stage. The recipe itself takes tens of minutes
(`make -C recipes/smol`); its measured figures are in README.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmforge.config import load_config
from llmforge.stages import crawl_filter, eval, grpo, quantize, sft

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "smol"
CONFIGS = {
    "text.yaml": crawl_filter.Config,
    "sft.yaml": sft.Config,
    "grpo.yaml": grpo.Config,
    "eval.yaml": eval.Config,
    "quantize-int8.yaml": quantize.Config,
    "quantize-int4.yaml": quantize.Config,
    "quantize-gguf.yaml": quantize.Config,
}


def generator():
    sys.path.insert(0, str(RECIPE))
    try:
        import make_problems
    finally:
        sys.path.remove(str(RECIPE))
    return make_problems


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_config_loads():
    assert sorted(p.name for p in (RECIPE / "configs").glob("*.yaml")) == sorted(CONFIGS)
    configs = {name: load_config(model, RECIPE / "configs" / name) for name, model in CONFIGS.items()}
    assert configs["sft.yaml"].lora.enabled and configs["sft.yaml"].lora.merge
    assert configs["grpo.yaml"].batch_size % configs["grpo.yaml"].num_generations == 0
    assert (configs["quantize-int8.yaml"].method, configs["quantize-int4.yaml"].method) == ("w8a16", "w4a16")


@pytest.mark.parametrize("seed", [0, 1])
def test_training_problems_never_share_arithmetic_with_held_out_ones(tmp_path, seed):
    subprocess.run([sys.executable, str(RECIPE / "make_problems.py"), str(tmp_path), "--seed", str(seed)],
                   check=True, capture_output=True)  # fmt: skip
    held_out = read(RECIPE / "tasks" / "smol_arith.jsonl")
    sft_records, grpo_records = read(tmp_path / "sft.jsonl"), read(tmp_path / "grpo.jsonl")
    assert len(sft_records) == len(grpo_records) == 480
    make_problems = generator()
    # a problem's arithmetic (template and numbers) is its id: the training draw never holds a held-out one
    drawn = make_problems.draw(heldout=False, count=480, seed=seed)
    assert {p["id"] for p in drawn}.isdisjoint(p["id"] for p in held_out)
    assert [p["question"] for p in drawn] == [r["prompt"][0]["content"] for r in sft_records]
    assert {p["question"] for p in drawn}.isdisjoint(p["question"] for p in held_out)
    for sft_record, grpo_record in zip(sft_records, grpo_records, strict=True):
        assert grpo_record["prompt"] == sft_record["prompt"]
        solution = sft_record["completion"][0]["content"]
        assert solution.endswith(f"<answer>{grpo_record['answer']}</answer>")
        # the worked steps compute the answer
        steps = re.fullmatch(r"<think>(.*)</think>\n<answer>(-?\d+)</answer>", solution, re.DOTALL).group(1)
        assert int(steps.rsplit("=", 1)[1]) == int(grpo_record["answer"])
    assert {r["id"].split("-")[0] for r in held_out} == set(make_problems.TEMPLATES)
    assert all(make_problems.is_heldout(r["kind"], *map(int, r["id"].split("-")[1:])) for r in held_out)


def test_held_out_file_is_the_generators(tmp_path):
    subprocess.run([sys.executable, str(RECIPE / "make_problems.py"), "--heldout", str(tmp_path / "h.jsonl")],
                   check=True, capture_output=True)  # fmt: skip
    assert (tmp_path / "h.jsonl").read_text() == (RECIPE / "tasks" / "smol_arith.jsonl").read_text()
    ids = [r["id"] for r in read(tmp_path / "h.jsonl")]
    assert len(ids) == len(set(ids)) == 100


def test_task_config_parses_and_its_filters_read_the_final_number(monkeypatch):
    from lm_eval.filters.extraction import RegexFilter

    from llmforge.evaluation.tasks import _check_yaml, select_tasks

    monkeypatch.chdir(RECIPE)  # the task's data path is relative to the recipe, where make runs
    task_file = Path("tasks/smol_arith.yaml")
    _check_yaml(task_file)
    tasks = select_tasks([str(task_file)])
    (task,) = tasks.leaf_tasks(tasks.load()).values()
    docs = list(task.test_docs())
    assert len(docs) == 100 and docs[0]["question"].endswith("?")
    filters = {f["name"]: f["filter"][0] for f in task.config.filter_list}
    replies = [
        "<think>3 + 4 = 7</think>\n<answer>7</answer>",
        "So she has 12 - 5 = 7 apples. #### 7",
        "no idea",
    ]
    final = RegexFilter(filters["final-number"]["regex_pattern"], group_select=-1)
    in_format = RegexFilter(filters["in-format"]["regex_pattern"])
    assert [r[0] for r in final.apply([[r] for r in replies], docs[:3])] == ["7", "7", "[invalid]"]
    assert [r[0] for r in in_format.apply([[r] for r in replies], docs[:3])] == [
        "7",
        "[invalid]",
        "[invalid]",
    ]


@pytest.mark.timeout(60)
def test_makefile_chains_every_stage(tmp_path):
    """`make -n` prints the commands a fresh run executes: import, every stage with its config, in order."""
    result = subprocess.run(["make", "-n", "-C", str(RECIPE), f"RUNS={tmp_path}/runs", "LLMFORGE=llmforge",
                             f"PYTHON={sys.executable}"], capture_output=True, text=True, check=True)  # fmt: skip
    commands = [line for line in result.stdout.splitlines() if line.startswith("llmforge ")]
    stages = [re.match(r"llmforge ([a-z-]+)", c).group(1) for c in commands]
    training = [s for s in stages if s in ("import", "sft", "grpo", "quantize")]
    assert training == ["import", "sft", "grpo", "quantize", "quantize", "quantize"]  # INT8, INT4, GGUF
    assert stages.count("eval") == 4  # base, after sft, after grpo, the GGUF (on llama.cpp)
    assert all("--update" in c for c in commands)
    assert all("-c configs/" in c for c in commands if not c.startswith("llmforge import"))
    assert any("ask.py llmforge" in line and "/seed-0/grpo" in line for line in result.stdout.splitlines())
