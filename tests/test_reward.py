"""`llmforge reward`: a reward model trained on chosen/rejected pairs with TRL's RewardTrainer, and grpo scoring
with it (`--reward DIR`)."""

import random
import re
import shutil

import pytest
from helpers import chat_records, llmforge, stats_mismatches, write_jsonl

from llmforge.artifacts import Artifact
from llmforge.errors import InputError
from llmforge.files import read_jsonl
from llmforge.rewards.model import RewardModel, reward_input_ids
from llmforge.stages import grpo, reward, sft
from llmforge.train.posttrain import LoraSettings


def word_pairs(count: int, seed: int = 0) -> list[dict]:
    """Pairs of one shape and length, told apart by one word: chosen says yes/good, rejected no/bad. An untrained
    score head ranks them no better than chance (accuracy at the first step is far from 1)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        a = rng.randint(10, 99)
        good, bad = ("yes", "no") if i % 2 else ("good", "bad")
        pairs.append({"prompt": f"Is {a} fine?", "chosen": f" {good} {a}", "rejected": f" {bad} {a}"})
    return pairs


def small(**settings) -> reward.Config:
    return reward.Config(
        **{"batch_size": 8, "max_length": 64, "learning_rate": 1e-3, "warmup_ratio": 0.0, **settings}
    )


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("reward-data") / "pairs.jsonl", word_pairs(64))


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_model, pairs):
    """A reward model trained on the word pairs, a quarter held out."""
    out = tmp_path_factory.mktemp("reward") / "rm"
    return reward.run(tiny_model, pairs, out, small(max_steps=10, eval_fraction=0.25, eval_steps=5))


def test_reward_model_learns_the_preference_and_ranks_held_out_pairs(reward_model, pairs):
    from transformers import AutoModelForSequenceClassification

    artifact = Artifact.open(reward_model)
    stats = artifact.stats
    assert (
        artifact.kind == "reward-model"
        and artifact.stage == "reward"
        and stats_mismatches(reward_model) == []
    )
    assert (stats["records"], stats["eval_records"], stats["steps"]) == (48, 16, 10)
    # the new head starts near chance and ends ranking every pair right, the held-out ones too
    assert stats["accuracy_first"] <= 0.75 and abs(stats["margin_first"]) < 0.1
    assert stats["accuracy_final"] == 1.0 and stats["eval_accuracy_final"] == 1.0
    assert stats["eval_loss_final"] < 0.1 < 0.6 < stats["loss_first"]
    measured = [r["step"] for r in read_jsonl(reward_model / "metrics.jsonl") if "eval_accuracy" in r]
    assert measured == [0, 5, 10]
    assert stats["eval_accuracy_first"] <= 0.75  # the untrained head, before the first step
    model = AutoModelForSequenceClassification.from_pretrained(reward_model)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    assert not (reward_model / "generation_config.json").exists()  # it scores, it does not generate
    # grpo's scorer reads the model as it was trained: chosen above rejected for every pair
    scorer = RewardModel(reward_model)
    records = read_jsonl(pairs)
    prompts = [r["prompt"] for r in records]
    chosen = scorer(prompts=prompts, completions=[r["chosen"] for r in records])
    rejected = scorer(prompts=prompts, completions=[r["rejected"] for r in records])
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))


def test_reward_model_card_and_refusals_by_the_generating_stages(reward_model, tmp_path):
    from llmforge.card import make_card

    card = make_card(reward_model)
    assert "pipeline_tag: text-classification" in card and "A llama reward model" in card
    assert re.search(r"\| held-out preference accuracy \(first → final\) \| 0\.\d+ → 1 \|", card)
    assert "AutoModelForSequenceClassification" in card
    # a reward model is not a language model: the stages that load one say what they need
    for argv in (["eval", str(reward_model), "-o", str(tmp_path / "e")],
                 ["sft", str(reward_model), str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "s")]):  # fmt: skip
        result = llmforge(*argv, check=False)
        assert (
            result.returncode == 2
            and "is a reward-model artifact (made by `llmforge reward`)" in result.stderr
        )


def test_scores_are_read_from_the_tokens_reward_trainer_trained_on(tiny_model, tmp_path):
    """reward_input_ids (what grpo's reward model reads, and what `reward` measures max_length with) gives the
    tokens RewardTrainer's own preprocessing gives, for every record shape: chats through the chat template, text
    with the EOS token, and pairs without a prompt."""
    import datasets
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from llmforge.model.loading import load_model, resolve_model

    source = resolve_model(tiny_model, "reward")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chat = [{"role": "user", "content": "Is 7 fine?"}]
    shapes = [
        [{"prompt": chat, "chosen": [{"role": "assistant", "content": "yes"}],
          "rejected": [{"role": "assistant", "content": "no"}]}],
        [{"prompt": "Is 7 fine?", "chosen": " yes", "rejected": " no"}],
        [{"chosen": "Q: 7? A: yes", "rejected": "Q: 7? A: no"}],
        [{"chosen": [*chat, {"role": "assistant", "content": "yes"}],
          "rejected": [*chat, {"role": "assistant", "content": "no"}]}],
    ]  # fmt: skip
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    trainer = RewardTrainer(model=load_model(source, score_head=True), args=args, processing_class=tokenizer,
                            train_dataset=datasets.Dataset.from_list(shapes[0]))  # fmt: skip
    for rows in shapes:
        prepared = trainer._prepare_dataset(datasets.Dataset.from_list(rows), tokenizer, args, "check")
        for row, done in zip(rows, prepared, strict=True):
            for name in ("chosen", "rejected"):
                assert reward_input_ids(tokenizer, row.get("prompt"), row[name]) == done[f"{name}_ids"], (
                    row,
                    name,
                )
    # text is read up to the EOS token the score was trained at; TRL's GRPOTrainer would stop before it
    ids = reward_input_ids(tokenizer, "Is 7 fine?", " yes")
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer("Is 7 fine? yes", add_special_tokens=False)["input_ids"] != ids


def test_grpo_scores_completions_with_a_reward_model(reward_model, tiny_model, tmp_path):
    """--reward DIR[:WEIGHT] puts the reward model beside the other rewards; it is an input of the artifact, so
    another reward model's scores make another run."""
    rm = shutil.copytree(reward_model, tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in word_pairs(8)])
    config = grpo.Config(rewards=[f"{rm}:1.0", "format:0.2"], batch_size=4, num_generations=4, max_length=64,
                         max_completion_length=8, max_steps=2, learning_rate=1e-4)  # fmt: skip
    out = grpo.run(tiny_model, prompts, tmp_path / "rl", config)
    artifact = Artifact.open(out)
    scored = artifact.stats["rewards"]["rm"]
    assert scored["failures"] == 0 and scored["std"] > 0 and stats_mismatches(out) == []
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "rewards/rm/mean" in r]
    assert len(logged) == 2
    [entry] = [e for e in artifact.manifest["inputs"] if e.get("role") == "reward model"]
    assert (entry["kind"], entry["fingerprint"]) == ("reward-model", Artifact.open(rm).fingerprint)
    assert grpo.run(tiny_model, prompts, tmp_path / "rl", config) == out  # up to date: nothing runs
    # the same path holding another reward model: the run is no longer up to date
    reward.run(tiny_model, write_jsonl(tmp_path / "few.jsonl", word_pairs(8, seed=1)), rm,
               small(max_steps=1), force=True)  # fmt: skip
    with pytest.raises(InputError, match="different"):
        grpo.run(tiny_model, prompts, tmp_path / "rl", config)


def test_reward_with_lora_merges_adapter_and_head_and_starts_from_an_sft_adapter(tiny_model, pairs, tmp_path):
    """--lora trains an adapter and the whole score head, both merged into the output; an adapter input (from sft)
    is merged into its base first. The output is always a full reward model."""
    data = write_jsonl(tmp_path / "chat.jsonl", chat_records(8))
    adapter = sft.run(tiny_model, data, tmp_path / "sft", sft.Config(batch_size=4, max_length=96, max_steps=1,
                      learning_rate=1e-3, lora=LoraSettings(enabled=True)))  # fmt: skip
    out = reward.run(adapter, pairs, tmp_path / "rm", small(max_steps=10, learning_rate=5e-3,
                     lora=LoraSettings(enabled=True)))  # fmt: skip
    artifact = Artifact.open(out)
    assert artifact.kind == "reward-model" and artifact.stats["trainable_share"] < 0.5
    # the frozen model, and what trains (the adapter and the head); not the head's untrained copy peft keeps
    stats = artifact.stats
    assert (
        stats["total_parameters"]
        == Artifact.open(tiny_model).stats["parameters"] + stats["trainable_parameters"]
    )
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert (
        artifact.stats["accuracy_final"] == 1.0
        and artifact.stats["loss_final"] < artifact.stats["loss_first"]
    )
    records = read_jsonl(pairs)[:8]
    scorer = RewardModel(out)
    prompts = [r["prompt"] for r in records]
    chosen = scorer(prompts=prompts, completions=[r["chosen"] for r in records])
    rejected = scorer(prompts=prompts, completions=[r["rejected"] for r in records])
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))
    assert [e["kind"] for e in artifact.manifest["inputs"]][0] == "adapter"


def test_reward_qlora_trains_on_a_4bit_base(tiny_model, pairs, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = reward.run(tiny_model, pairs, tmp_path / "rm", small(max_steps=2, lora=LoraSettings(qlora=True)))
    assert Artifact.open(out).kind == "reward-model"
    RewardModel(out)(prompts=["Is 7 fine?"], completions=[" yes"])


def test_reward_records_margins_and_implicit_prompts(tiny_model, tmp_path):
    """Llama 2's per-pair margin reaches the loss; pairs without a prompt hold the whole conversation."""
    with_margin = [{**pair, "margin": 1.0} for pair in word_pairs(8)]
    out = reward.run(
        tiny_model, write_jsonl(tmp_path / "m.jsonl", with_margin), tmp_path / "m", small(max_steps=1)
    )
    plain = reward.run(tiny_model, write_jsonl(tmp_path / "p.jsonl", word_pairs(8)), tmp_path / "p",
                       small(max_steps=1))  # fmt: skip
    # the same pairs and weights, the loss shifted by the margin: -log sigmoid(d - 1) > -log sigmoid(d)
    assert Artifact.open(out).stats["loss_first"] > Artifact.open(plain).stats["loss_first"] + 0.2
    implicit = [
        {
            "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
        }
    ] * 4
    out = reward.run(
        tiny_model, write_jsonl(tmp_path / "i.jsonl", implicit), tmp_path / "i", small(max_steps=1)
    )
    assert Artifact.open(out).stats["shape"] == "implicit prompt"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"prompt": "a", "chosen": "b"}], r"pairs.jsonl:1: needs 'rejected'"),
        ([{"prompt": "a", "chosen": "b", "rejected": "b"}], "identical"),
        ([{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}], "'margin' must be a finite number"),
        ([{"prompt": "a", "chosen": "b", "rejected": "c", "margin": 1}, {"prompt": "a", "chosen": "b",
          "rejected": "d"}], r"pairs.jsonl:2: no 'margin', where other pairs have one"),
        ([{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}], "rejected": "b"}], "must end with the assistant's answer"),
        ([{"chosen": [{"role": "user", "content": "a"}], "rejected": "b"}], "'chosen' has no assistant turn"),
        ([{"prompt": "long " * 80, "chosen": "b", "rejected": "c"}], r"pairs.jsonl:1: \d+ tokens, over max_length"),
    ],
)  # fmt: skip
def test_reward_refuses_bad_pairs_in_one_line_before_any_work(tiny_model, tmp_path, records, message):
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    result = llmforge("reward", str(tiny_model), str(data), "-o", str(tmp_path / "rm"), "--seq-len", "64",
                      check=False)  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "rm").exists()


def test_reward_warns_about_pairs_too_long_and_leaves_them_out(tiny_model, tmp_path):
    records = [*word_pairs(8), {"prompt": "long " * 80, "chosen": " yes", "rejected": " no"}]
    result = llmforge("reward", str(tiny_model), str(write_jsonl(tmp_path / "p.jsonl", records)), "-o",
                      str(tmp_path / "rm"), "--seq-len", "64", "--max-steps", "1")  # fmt: skip
    assert "1 of 9 pairs are longer than max_length (64) and are left out (the first: " in result.stderr
    stats = Artifact.open(tmp_path / "rm").stats
    assert (stats["records"], stats["examples"]) == (9, 8)


def test_grpo_refuses_a_reward_that_is_not_a_reward_model(tiny_model, reward_model, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi"}])
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}]}])
    untemplated = shutil.copytree(reward_model, tmp_path / "rm")
    (untemplated / "chat_template.jinja").unlink()
    for data, reward_arg, message in (
        (prompts, tiny_model, "LlamaForCausalLM is not a sequence-classification model"),
        (prompts, tmp_path / "missing", "unknown reward"),
        (chats, untemplated, "the prompts are chats, and the reward model's tokenizer has no chat template"),
    ):
        result = llmforge("grpo", str(tiny_model), str(data), "-o", str(tmp_path / "rl"), "--reward",
                          str(reward_arg), "--dry-run", check=False)  # fmt: skip
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_reward_dry_run_shows_the_head_and_the_objective(tiny_model, pairs):
    result = llmforge("reward", str(tiny_model), str(pairs), "-o", "unused", "--dry-run", "--lora",
                      "--center-rewards", "0.01")  # fmt: skip
    plan = " ".join(result.stderr.split())
    assert "a reward model (the decoder and its score head, the adapter merged)" in plan
    assert "-log sigmoid(score(chosen) - score(rejected)) + 0.01 x mean squared score" in plan
    assert result.stdout == ""


def test_reward_resumes_and_measures_the_input_model_once(tiny_model, pairs, tmp_path):
    """An interrupted run resumes from its last complete checkpoint; the held-out pairs measured before the first
    step are not measured again on resuming."""
    from test_sft import StopAtStep

    config = small(max_steps=4, save_steps=2, eval_steps=2, eval_fraction=0.25)
    with pytest.raises(KeyboardInterrupt):
        reward.run(tiny_model, pairs, tmp_path / "rm", config, callbacks=[StopAtStep(3)])
    out = reward.run(tiny_model, pairs, tmp_path / "rm", config)
    stats = Artifact.open(out).stats
    assert (stats["resumed_from_step"], stats["steps"]) == (2, 4) and stats_mismatches(out) == []
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r] == [0, 2, 4]


def test_reward_trains_a_reward_model_further(reward_model, pairs, tmp_path):
    """A reward model is an input reward takes (more preference data, a later round): its trained head is kept,
    so the held-out pairs are ranked right before the first step."""
    out = reward.run(reward_model, pairs, tmp_path / "more", small(max_steps=1, eval_fraction=0.25))
    artifact = Artifact.open(out)
    assert (
        artifact.stats["eval_accuracy_first"] == 1.0
        and artifact.manifest["inputs"][0]["kind"] == "reward-model"
    )


def test_the_same_reward_run_gives_the_same_model(tiny_model, tmp_path):
    """The new head starts from seeded weights: same inputs and settings, same bytes (and another seed, another
    head)."""
    data = write_jsonl(tmp_path / "p.jsonl", word_pairs(8))
    first, second = (reward.run(tiny_model, data, tmp_path / name, small(max_steps=1)) for name in ("a", "b"))
    other = reward.run(tiny_model, data, tmp_path / "c", small(max_steps=1, seed=1))
    weights = [(path / "model.safetensors").read_bytes() for path in (first, second, other)]
    assert weights[0] == weights[1] != weights[2]


@pytest.mark.slow
def test_reward_under_deepspeed_zero3_with_two_cpu_processes(tiny_model, pairs, tmp_path):
    """ZeRO-3 partitions the decoder and the new head between two processes; the artifact gathers the whole
    reward model, the score head included, and it ranks the held-out pairs as trained."""
    from transformers import AutoModelForSequenceClassification

    config = small(batch_size=4, max_steps=3, zero=3, nproc=2, eval_fraction=0.25)
    out = reward.run(tiny_model, pairs, tmp_path / "zero3", config)
    stats = Artifact.open(out).stats
    assert (
        stats["total_parameters"] == Artifact.open(tiny_model).stats["parameters"] + 128
    )  # the head: hidden x 1
    assert stats_mismatches(out) == [] and stats["eval_accuracy_final"] > stats["eval_accuracy_first"]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert tuple(model.score.weight.shape) == (1, 128) and not list(out.glob("*.pt"))
