import pytest
from helpers import grpo_records, stats_mismatches, write_jsonl
from test_sft import StopAtStep

from llmforge.artifacts import Artifact
from llmforge.card import make_card
from llmforge.files import read_jsonl
from llmforge.stages import grpo
from llmforge.train.posttrain import LoraSettings
from llmforge.train.trl_job import Diverged

DIGITS_REWARD = '''
def digits(completions, **columns):
    """Share of the completion's characters that are digits: dense, and learnable by a random tiny model."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]
'''


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("grpo-data") / "prompts.jsonl", grpo_records(16))


def test_grpo_mean_reward_rises(tmp_path, tiny_model, prompts):
    from transformers import AutoModelForCausalLM

    (tmp_path / "my_rewards.py").write_text(DIGITS_REWARD)
    config = grpo.Config(rewards=[f"{tmp_path / 'my_rewards.py'}:digits"], batch_size=8, num_generations=8,
                         max_completion_length=8, max_length=64, learning_rate=1e-2, lr_scheduler="constant",
                         warmup_ratio=0.0, kl_beta=0.0, max_steps=12, seed=0)  # fmt: skip
    out = grpo.run(tiny_model, prompts, tmp_path / "grpo", config)
    artifact = Artifact.open(out)
    stats = artifact.stats
    assert artifact.kind == "model" and stats["steps"] == 12 and stats["trainable_share"] == 1.0
    digits = stats["rewards"]["digits"]
    assert digits["mean_final"] > digits["mean_first"] + 0.1
    assert stats["reward_final"] == pytest.approx(digits["mean_final"])  # one reward of weight 1
    assert stats_mismatches(out) == []  # what grpo writes is what it declares, and what cards read
    # the card names the reward as TRL logs it (the function's name, not the file it comes from)
    assert f"| reward digits (first → final) | {digits['mean_first']:.4g} → {digits['mean_final']:.4g} |" in (
        make_card(out)
    )
    AutoModelForCausalLM.from_pretrained(out)


BROKEN_REWARD = """
def broken(completions, **columns):
    raise RuntimeError("this scorer is broken")
"""


def test_grpo_lora_with_builtin_rewards_resumes_and_counts_reward_failures(tmp_path, tiny_model, prompts):
    """A reward that fails scores 0 and is counted. TRL averages what rewards log over the batches of a log and
    over processes; the manifest has the exact total, resumes included: here 8 completions a step, logged every 2
    steps (steps 1 and 2 in one log), a checkpoint at step 3 (a log of its own, or a resume from it would lose
    step 3's count), interrupted at step 4 and resumed from checkpoint-3."""
    from transformers import AutoModelForCausalLM

    (tmp_path / "scorers.py").write_text(BROKEN_REWARD)
    config = grpo.Config(rewards=["math:1.0", "format:0.2", f"{tmp_path / 'scorers.py'}:broken:0"], batch_size=8,
                         num_generations=4, max_completion_length=8, max_length=64, learning_rate=1e-3, max_steps=4,
                         save_steps=3, logging_steps=2, lora=LoraSettings(enabled=True))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        grpo.run(tiny_model, prompts, tmp_path / "grpo", config, callbacks=[StopAtStep(4)])
    out = grpo.run(tiny_model, prompts, tmp_path / "grpo", config)
    artifact = Artifact.open(out)
    assert artifact.kind == "adapter"
    assert (artifact.stats["resumed_from_step"], artifact.stats["steps"]) == (3, 4)
    for key in ("reward_final", "reward_std", "kl", "completion_length_mean"):
        assert key in artifact.stats, key
    rewards = artifact.stats["rewards"]
    assert set(rewards) == {"math", "format", "broken"} and stats_mismatches(out) == []
    assert [rewards[name]["failures"] for name in ("broken", "math", "format")] == [32, 0, 0]
    assert artifact.stats["reward_failures"] == 32
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "reward" in r]
    assert [(r["step"], r["rewards/broken/failures"]) for r in logged] == [(2, 16), (3, 8), (4, 8)]
    assert {
        "rewards/math/mean",
        "rewards/math/std",
        "rewards/format/mean",
        "kl",
        "completions/mean_length",
    } <= set(logged[-1])
    assert 0 < artifact.stats["completion_length_mean"] <= 8
    AutoModelForCausalLM.from_pretrained(out)


def test_grpo_stops_when_the_policy_overflows(tmp_path, tiny_model, prompts):
    """After a step with a learning rate the weights cannot take, the next rollouts sample from inf/NaN
    probabilities: the run stops there, naming the step, instead of crashing inside generate."""
    (tmp_path / "my_rewards.py").write_text(DIGITS_REWARD)  # dense: every group has advantages to follow
    config = grpo.Config(rewards=[f"{tmp_path / 'my_rewards.py'}:digits"], batch_size=8, num_generations=4,
                         max_completion_length=8, max_length=64, learning_rate=1e10, warmup_ratio=0.0,
                         max_steps=3)  # fmt: skip
    with pytest.raises(Diverged, match=r"^grpo diverged at step 2: sampling the rollouts met inf or NaN "
                                       r"probabilities .*no checkpoint was complete yet \(save_steps 50\)"):  # fmt: skip
        grpo.run(tiny_model, prompts, tmp_path / "grpo", config)
    assert not (tmp_path / "grpo").exists()
