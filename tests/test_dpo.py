import pytest
from helpers import chat_records, preference_records, stats_mismatches, write_jsonl
from test_sft import StopAtStep, finite

from llmforge.artifacts import Artifact
from llmforge.files import read_jsonl
from llmforge.stages import dpo, sft
from llmforge.train.posttrain import LoraSettings
from llmforge.train.trl_job import Diverged


@pytest.fixture(scope="module")
def preferences(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("dpo-data") / "pairs.jsonl", preference_records(16))


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, tiny_model):
    """A LoRA adapter from a short SFT run: what a user chains into dpo."""
    root = tmp_path_factory.mktemp("sft-adapter")
    data = write_jsonl(root / "chat.jsonl", chat_records(8))
    config = sft.Config(
        batch_size=4, max_length=96, max_steps=1, learning_rate=1e-3, lora=LoraSettings(enabled=True)
    )
    return sft.run(tiny_model, data, root / "adapter", config)


def small(**settings) -> dpo.Config:
    return dpo.Config(
        **{"batch_size": 4, "max_length": 64, "learning_rate": 5e-4, "warmup_ratio": 0.0, **settings}
    )


def test_dpo_preference_accuracy_rises_on_a_separable_set(tmp_path, tiny_model, preferences):
    from transformers import AutoModelForCausalLM

    out = dpo.run(tiny_model, preferences, tmp_path / "dpo", small(max_steps=6))
    artifact = Artifact.open(out)
    stats = artifact.stats
    assert artifact.kind == "model" and stats["steps"] == 6 and stats["trainable_share"] == 1.0
    # the policy starts as its reference: every reward is 0 and no pair is ranked right yet
    assert stats["accuracy_first"] == 0.0 and stats["margin_first"] == 0.0
    assert stats["accuracy_final"] == 1.0 and stats["margin_final"] > 0
    assert stats_mismatches(out) == []  # what dpo writes is what it declares, and what cards read
    assert stats["rewards_chosen"] > stats["rewards_rejected"]
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "rewards/margins" in r]
    assert len(logged) == 6
    AutoModelForCausalLM.from_pretrained(out)


def test_dpo_measures_preference_accuracy_on_held_out_pairs(tmp_path, tiny_model, preferences):
    """A quarter of the pairs held out (--eval-fraction): the preference the policy learns carries over to pairs it
    never trained on, measured at eval_steps and at the end; KTO splits held-out pairs as it splits the others."""
    from llmforge.card.model_card import model_card

    out = dpo.run(
        tiny_model, preferences, tmp_path / "dpo", small(max_steps=6, eval_fraction=0.25, eval_steps=3)
    )
    stats = Artifact.open(out).stats
    assert (stats["records"], stats["eval_records"]) == (12, 4) and stats_mismatches(out) == []
    measured = [r for r in read_jsonl(out / "metrics.jsonl") if "eval_rewards/accuracies" in r]
    assert [r["step"] for r in measured] == [0, 3, 6]
    # measured first on the input model, the reference itself: no margin, no pair ranked right yet
    assert (stats["eval_accuracy_first"], stats["eval_margin_first"]) == (0.0, 0.0)
    assert stats["eval_accuracy_final"] == 1.0 and stats["eval_margin_final"] > 0
    card = model_card(Artifact.open(out), None, None)
    assert "| held-out preference accuracy (first → final) |" in card
    kto = dpo.run(
        tiny_model, preferences, tmp_path / "kto", small(loss="kto", max_steps=2, eval_fraction=0.25)
    )
    assert [r["step"] for r in read_jsonl(kto / "metrics.jsonl") if "eval_loss" in r] == [0, 2]


def test_dpo_stops_at_the_first_non_finite_loss_and_keeps_the_checkpoint_before(
    tmp_path, tiny_model, preferences
):
    config = small(max_steps=4, save_steps=1, learning_rate=1e10)
    with pytest.raises(
        Diverged, match=r"^dpo diverged at step 2: the training loss is nan\. .*checkpoint-1 \(step 1\)"
    ):
        dpo.run(tiny_model, preferences, tmp_path / "dpo", config)
    checkpoints = tmp_path / "dpo.partial" / "checkpoints"
    assert not (tmp_path / "dpo").exists()
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-1"]
    assert finite(checkpoints / "checkpoint-1" / "model.safetensors")


def test_dpo_lora_continues_an_sft_adapter_and_resumes(tmp_path, tiny_model, sft_adapter, preferences):
    from transformers import AutoModelForCausalLM

    config = small(max_steps=2, save_steps=1, lora=LoraSettings(enabled=True))
    with pytest.raises(KeyboardInterrupt):
        dpo.run(sft_adapter, preferences, tmp_path / "dpo", config, callbacks=[StopAtStep(2)])
    out = dpo.run(sft_adapter, preferences, tmp_path / "dpo", config)
    artifact = Artifact.open(out)
    assert artifact.kind == "adapter"
    assert (artifact.stats["resumed_from_step"], artifact.stats["steps"]) == (1, 2)
    # the same adapter kept training: its base is still the SFT adapter's base, the adapter is the parent
    assert artifact.extra["base_model"]["fingerprint"] == Artifact.open(tiny_model).fingerprint
    assert artifact.manifest["inputs"][0]["fingerprint"] == Artifact.open(sft_adapter).fingerprint
    assert artifact.stats["trainable_parameters"] == Artifact.open(sft_adapter).stats["trainable_parameters"]
    assert not (out / "ref").exists()  # TRL's frozen reference copy is not part of the adapter
    model = AutoModelForCausalLM.from_pretrained(out)
    assert list(model.peft_config) == ["default"]


def test_dpo_full_on_an_adapter_trains_every_weight_of_the_merged_model(tmp_path, tiny_model, sft_adapter,
                                                                      preferences):  # fmt: skip
    out = dpo.run(sft_adapter, preferences, tmp_path / "full", small(max_steps=2))
    artifact = Artifact.open(out)
    assert artifact.kind == "model" and artifact.stats["steps"] == 2
    assert artifact.stats["trainable_share"] == 1.0
    assert artifact.stats["total_parameters"] == Artifact.open(tiny_model).stats["parameters"]
    assert artifact.manifest["inputs"][0]["fingerprint"] == Artifact.open(sft_adapter).fingerprint


def test_an_sft_term_keeps_the_chosen_answers_likely(tmp_path, tiny_model, preferences):
    """--sft-weight adds TRL's "sft" loss (the chosen answers' NLL) to DPO's, as RPO does: after the same steps
    the chosen answers are more likely than under DPO alone, and the objective says so."""
    runs = {}
    for weight in (0.0, 1.0):
        out = dpo.run(tiny_model, preferences, tmp_path / f"w{weight}", small(max_steps=4, sft_weight=weight))
        runs[weight] = [r["logps/chosen"] for r in read_jsonl(out / "metrics.jsonl") if "logps/chosen" in r]
    assert runs[0.0][0] == pytest.approx(runs[1.0][0])  # the same start
    assert runs[1.0][-1] > runs[0.0][-1]
    assert Artifact.open(tmp_path / "w1.0").config["sft_weight"] == 1.0
    with pytest.raises(ValueError, match="sft_weight applies to DPOTrainer's losses, not orpo"):
        small(loss="orpo", sft_weight=1.0)


@pytest.mark.parametrize("loss", ["ipo", "kto", "orpo", "simpo"])
def test_dpo_loss_variants(tmp_path, tiny_model, preferences, loss):
    data = preferences
    if loss == "ipo":  # plain-text records (no chat template)
        rows = [{"prompt": f"Repeat {n}:", "chosen": f" {n}", "rejected": " the data"} for n in range(8)]
        data = write_jsonl(tmp_path / "text.jsonl", rows)
    if loss == "kto":  # unpaired thumbs-up / thumbs-down data
        rows = read_jsonl(preferences)[:8]
        unpaired = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in rows[:4]]
        unpaired += [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in rows[4:]]
        data = write_jsonl(tmp_path / "kto.jsonl", unpaired)
    config = small(max_steps=1, loss=loss, lora=LoraSettings(enabled=True))
    artifact = Artifact.open(dpo.run(tiny_model, data, tmp_path / loss, config))
    assert artifact.kind == "adapter" and artifact.stats["steps"] == 1 and artifact.config["loss"] == loss
    if loss == "kto":  # unpaired: no accuracy, and margins only for batches holding both labels
        assert artifact.stats["shape"] == "unpaired" and "loss_final" in artifact.stats
    else:
        assert "accuracy_final" in artifact.stats and "margin_final" in artifact.stats
    assert stats_mismatches(artifact.path) == []
