import pytest

from llmforge.errors import InputError
from llmforge.rewards import load_reward, parse_spec
from llmforge.rewards.answers import extract_code, final_answer
from llmforge.rewards.math_answer import equivalent, math_reward
from llmforge.rewards.sandbox import Limits, code_reward
from llmforge.rewards.text import exact_reward, format_reward, json_reward

QUICK = Limits(timeout_s=2.0, memory_mb=256, output_bytes=4096)


def chat(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so the result is \\boxed{\\frac{1}{2}}", "1/2"),
        ("Adding up we get 42.\n#### 42", "42"),
        ("<think>2*21</think><answer>42</answer>", "42.0"),
        ("\\boxed{0.5}", "\\frac{2}{4}"),
        ("\\boxed{x^2+2x+1}", "(x+1)^2"),
        ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
        ("#### 1,000", "1000"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{(1, 2)}", "(1,2)"),
    ],
)
def test_math_reward_accepts_equivalent_answers(text, answer):
    assert math_reward([text], [answer]) == [1.0]
    assert math_reward([chat(text)], [answer]) == [1.0]  # conversational completions too


@pytest.mark.parametrize(
    "text, answer",
    [
        ("\\boxed{41}", "42"),
        ("the answer is 42", "42"),  # no committed final answer
        ("\\boxed{x^2+1}", "(x+1)^2"),
        ("\\boxed{__import__('os')}", "0"),  # never evaluated
        ("\\boxed{(1, 2)}", "(2,1)"),
    ],
)
def test_math_reward_rejects_wrong_or_missing_answers(text, answer):
    assert math_reward([text], [answer]) == [0.0]


def test_reference_answers_may_be_worked_solutions():
    assert math_reward(["\\boxed{7}"], ["3 plus 4 is 7\n#### 7"]) == [1.0]
    assert equivalent("3/4", "0.75") and not equivalent("3/4", "0.7")


def test_final_answer_and_code_extraction():
    assert final_answer("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert final_answer("no answer here") is None
    assert (
        extract_code("<think>plan</think>```python\ndef f():\n    return 1\n```")
        == "def f():\n    return 1\n"
    )
    assert extract_code("<think>plan</think>def g(): pass") == "def g(): pass"


def test_exact_reward():
    assert exact_reward(["  Paris ", "<answer>Paris</answer>", "paris", "Paris, France"], ["Paris"] * 4) == [
        1.0,
        1.0,
        0.0,
        0.0,
    ]


def test_format_reward_strict_and_partial():
    completions = [
        "<think>add them</think> <answer>7</answer>",
        "<think>add them</think>7",
        "<answer>7</answer> trailing",
        "7",
        "<think>a</think><think>b</think><answer>7</answer>",
    ]
    assert format_reward(completions) == pytest.approx([1.0, 0.4, 0.4, 0.0, 0.4])


def test_json_reward_against_schema():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    completions = ['{"name": "Ada"}', '```json\n{"name": "Ada"}\n```', '{"name": 3}', "name: Ada", '{"x": 1}']
    assert json_reward(completions, schema=[schema] * 5) == [1.0, 1.0, 0.5, 0.0, 0.5]
    assert json_reward(["[1, 2]"], schema=[None]) == [1.0]  # no schema: any JSON


def test_code_reward_runs_the_tests():
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",
        "def add(a, b) return",  # a syntax error
        "import sys\nsys.exit(0)",  # leaving before the tests is not passing
        "import os\nos._exit(0)",
    ]
    assert code_reward(completions, [tests] * 5, limits=QUICK) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert code_reward(["def add(a, b):\n    return a + b"], [["assert add(1, 1) == 2"]], limits=QUICK) == [
        1.0
    ]


def test_reward_specs_and_user_rewards(tmp_path, monkeypatch):
    assert parse_spec("math") == parse_spec("math:1")
    assert parse_spec("format:0.2").weight == 0.2
    spec = parse_spec("my_rewards.py:short:0.5")
    assert (spec.name, spec.weight, spec.label) == ("my_rewards.py:short", 0.5, "short")
    with pytest.raises(InputError, match="unknown reward 'maths'"):
        parse_spec("maths")

    (tmp_path / "my_rewards.py").write_text(
        "def short(completions, **kw):\n    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n"
    )
    from_file = load_reward(parse_spec(f"{tmp_path / 'my_rewards.py'}:short"))
    assert from_file.__name__ == "short" and from_file(
        prompts=["p", "p"], completions=["ok", "far too long"]
    ) == [
        1.0,
        0.0,
    ]
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = load_reward(parse_spec("my_rewards:short"))
    assert from_module(completions=["abc"]) == [1.0]
    with pytest.raises(InputError, match="has no function 'missing'"):
        load_reward(parse_spec("my_rewards:missing"))
    with pytest.raises(InputError, match="no such file"):
        load_reward(parse_spec("nowhere/rewards.py:f"))
    builtin = load_reward(parse_spec("math:2"))
    assert builtin.__name__ == "math" and builtin(completions=["\\boxed{2}"], answer=["2"]) == [1.0]


BROKEN_REWARDS = """
def broken(completions, **columns):
    raise RuntimeError("this reward is broken")


def short(completions, **columns):
    return [1.0]  # one score, whatever the number of completions
"""


def test_a_reward_that_fails_scores_zero_and_is_counted(tmp_path, capsys):
    (tmp_path / "rewards.py").write_text(BROKEN_REWARDS)
    logged = []
    log_metric = lambda name, value: logged.append((name, value))  # noqa: E731 - what TRL passes
    for name in ("broken", "short"):
        function = load_reward(parse_spec(f"{tmp_path / 'rewards.py'}:{name}"))
        for _ in range(2):
            assert (
                function(prompts=["p"] * 3, completions=["a", "b", "c"], log_metric=log_metric) == [0.0] * 3
            )
    exact = load_reward(parse_spec("exact"))
    assert exact(completions=["7", "8"], answer=["7", "7"], log_metric=log_metric) == [1.0, 0.0]
    assert logged == [("rewards/broken/failures", 3)] * 2 + [("rewards/short/failures", 3)] * 2 + [
        ("rewards/exact/failures", 0)
    ]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "failed" in line]
    assert len(warnings) == 2 and "this reward is broken" in warnings[0]  # once per reward


def test_a_sandbox_that_cannot_start_fails_the_reward_not_the_trainer(monkeypatch):
    from llmforge.rewards import sandbox

    broken = sandbox.Isolation(False, False, False)
    monkeypatch.setattr(sandbox, "isolation", lambda: broken)
    monkeypatch.setattr(sandbox, "CONFINE", sandbox.CONFINE.with_name("missing.py"))
    logged = []
    code = load_reward(parse_spec("code"), limits=QUICK)
    scores = code(completions=["x = 1", "x = 2"], tests=["assert True"] * 2,
                  log_metric=lambda name, value: logged.append((name, value)))  # fmt: skip
    assert scores == [0.0, 0.0] and logged == [("rewards/code/failures", 2)]


def test_grpo_keeps_training_when_a_reward_fails(tmp_path, tiny_model):
    from helpers import grpo_records, write_jsonl

    from llmforge.artifacts import Artifact
    from llmforge.files import read_jsonl
    from llmforge.stages import grpo

    (tmp_path / "rewards.py").write_text(BROKEN_REWARDS)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", grpo_records(8))
    config = grpo.Config(rewards=[f"{tmp_path / 'rewards.py'}:broken", "format"], batch_size=4, num_generations=4,
                         max_completion_length=4, max_length=64, max_steps=2, kl_beta=0.0)  # fmt: skip
    out = grpo.run(tiny_model, prompts, tmp_path / "grpo", config)
    assert Artifact.open(out).stats["steps"] == 2
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "rewards/broken/failures" in r]
    assert [(r["rewards/broken/failures"], r["rewards/format/failures"]) for r in logged] == [(4, 0), (4, 0)]
