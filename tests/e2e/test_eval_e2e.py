"""llmforge eval as a user runs it: the output path alone on stdout, --compare, bad input."""

import json
import shutil

import pytest
from helpers import llmforge, write_jsonl

from llmforge.artifacts import Artifact

# Two workers share two cores: one torch thread per process keeps the subprocesses from thrashing.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_eval_and_compare(tiny_model, tmp_path):
    command = ["eval", tiny_model, "-o", tmp_path / "report", "--tasks", "llmforge_arith_mc", "--limit", "10"]
    first = llmforge(*command, env=ONE_THREAD)
    assert first.stdout == f"{tmp_path / 'report'}\n"
    assert "llmforge_arith_mc" in first.stderr and "acc_norm" in first.stderr  # the table, on stderr
    report = Artifact.open(tmp_path / "report")
    assert report.kind == "eval-report" and report.config["limit"] == 10
    assert report.manifest["inputs"][0]["path"] == str(tiny_model.resolve())  # lineage reaches the model
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["n-samples"]["llmforge_arith_mc"]["effective"] == 10
    assert report.stats["scores"]["llmforge_arith_mc"]["acc,none"] == round(
        results["results"]["llmforge_arith_mc"]["acc,none"], 4
    )

    compared = llmforge("eval", "--compare", tmp_path / "report", tmp_path / "report")
    assert compared.stdout == ""  # no artifact is made
    assert "side by side" in compared.stderr and "(+0.0000)" in compared.stderr  # the same model: zero deltas


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(tiny_model, tmp_path):
    def fails(*args) -> str:
        result = llmforge(*args, check=False, env=ONE_THREAD)
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return errors[0]

    # a task whose data file has a broken line
    data = write_jsonl(tmp_path / "quiz" / "items.jsonl",
                       [{"q": "Is this fine?", "a": "yes"}, {"q": "And this?", "a": "yes"}, '{"q": "Broken, "a": }'])  # fmt: skip
    (tmp_path / "quiz" / "quiz.yaml").write_text(
        f"task: quiz\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
    )
    line = fails("eval", tiny_model, "-o", tmp_path / "a", "--tasks", f"{tmp_path / 'quiz'}/")
    assert f"{data}:3: not valid JSON" in line

    # a task that runs the code the model writes (lm-eval's unsafe_code), without --allow-code-execution
    (tmp_path / "quiz" / "quiz.yaml").write_text(
        (tmp_path / "quiz" / "quiz.yaml").read_text() + "unsafe_code: true\n"
    )
    line = fails("eval", tiny_model, "-o", tmp_path / "c", "--tasks", tmp_path / "quiz" / "quiz.yaml")
    assert line.endswith("task quiz executes the code the model writes (lm-eval's unsafe_code); run in a sandbox "
                         "and confirm with --allow-code-execution")  # fmt: skip

    # a model artifact whose weights are cut short
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = fails("eval", broken, "-o", tmp_path / "b")
    assert "model.safetensors: the weights cannot be read, the file is truncated or corrupt" in line
