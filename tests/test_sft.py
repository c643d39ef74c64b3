import json

import pytest
from helpers import chat_records, stats_mismatches, write_jsonl
from transformers import TrainerCallback

from llmforge.artifacts import Artifact
from llmforge.data.records import read_records
from llmforge.errors import InputError, LLMForgeError
from llmforge.files import read_jsonl
from llmforge.stages import sft
from llmforge.train.posttrain import LoraSettings
from llmforge.train.trl_job import Diverged, to_dataset, training_arguments


class StopAtStep(TrainerCallback):
    """An interruption (Ctrl-C) right after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class PoisonWeights(TrainerCallback):
    """A fault inside training: one trainable weight becomes NaN at the start of optimizer step `step` (its loss is
    then NaN), or at the end of training with step=None (after the last step was checked)."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def poison(self, model) -> None:
        import torch

        with torch.no_grad():
            next(p for p in model.parameters() if p.requires_grad).view(-1)[0] = float("nan")

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.step is not None and state.global_step + 1 == self.step:
            self.poison(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.step is None:
            self.poison(model)


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("sft-data") / "chat.jsonl", chat_records(24))


def small(**settings) -> sft.Config:
    return sft.Config(
        **{"batch_size": 4, "max_length": 96, "max_steps": 3, "learning_rate": 1e-3, **settings}
    )


def test_sft_full_writes_a_loadable_model(tmp_path, tiny_model, chat_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = sft.run(tiny_model, chat_data, tmp_path / "sft", small())
    artifact = Artifact.open(out)
    base = Artifact.open(tiny_model)
    assert artifact.kind == "model" and artifact.stats["steps"] == 3
    assert artifact.stats["trainable_share"] == 1.0 and artifact.stats["shape"] == "messages"
    assert artifact.stats["loss_final"] < artifact.stats["loss_first"]
    assert stats_mismatches(out) == []  # what sft writes is what it declares, and what cards read
    assert artifact.extra["tokenizer_fingerprint"] == base.extra["tokenizer_fingerprint"]
    assert [i["fingerprint"] for i in artifact.manifest["inputs"]][0] == base.fingerprint
    assert artifact.verify() == []
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert prompt["input_ids"].shape[1] < generated.shape[1] <= prompt["input_ids"].shape[1] + 3
    assert sft.run(tiny_model, chat_data, tmp_path / "sft", small()) == out  # up to date: nothing to do


def test_sft_measures_held_out_records_it_does_not_train_on(tmp_path, tiny_model, chat_data):
    """--eval-fraction holds a seeded share of the records out of training and measures the loss on them every
    eval_steps and at the end (a last step that is no multiple of eval_steps is measured after it)."""
    from llmforge.card.model_card import model_card
    from llmforge.data.records import held_out

    config = small(max_steps=5, eval_fraction=0.25, eval_steps=2)
    out = sft.run(tiny_model, chat_data, tmp_path / "sft", config)
    stats = Artifact.open(out).stats
    assert (stats["records"], stats["eval_records"]) == (18, 6) and stats_mismatches(out) == []
    measured = [r for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in measured] == [0, 2, 4, 5]  # the input model first
    first, final = measured[0]["eval_loss"], measured[-1]["eval_loss"]
    assert (stats["eval_loss_first"], stats["eval_loss_final"]) == (round(first, 6), round(final, 6))
    assert stats["eval_loss_final"] < stats["eval_loss_first"]  # the answers' pattern carries over
    # the six held out are the ones --seed 0 chooses, and training never saw them
    records = read_records(chat_data, "sft", sft.validator(config))
    trained, evaluated = held_out(records, 0.25, seed=0)
    assert len(evaluated.items) == 6 and not set(map(str, evaluated.items)) & set(map(str, trained.items))
    assert "| held-out records | 6 (0.25 of the data, not trained on) |" in model_card(
        Artifact.open(out), None, None
    )
    other = sft.run(
        tiny_model, chat_data, tmp_path / "seed-1", small(max_steps=1, eval_fraction=0.25, seed=1)
    )
    assert Artifact.open(other).stats["eval_records"] == 6
    assert held_out(records, 0.25, seed=1)[1].items != evaluated.items


def test_sft_eval_data_is_an_input_measured_but_not_training_data(tmp_path, tiny_model, chat_data):
    from llmforge.evaluation.contamination import lineage, training_files
    from llmforge.model.loading import resolve_model

    held = write_jsonl(tmp_path / "held.jsonl", chat_records(5, seed=9))
    out = sft.run(tiny_model, chat_data, tmp_path / "sft", small(max_steps=2, eval_data=str(held)))
    artifact = Artifact.open(out)
    assert (artifact.stats["records"], artifact.stats["eval_records"]) == (24, 5)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r] == [0, 2]
    entry = artifact.manifest["inputs"][-1]
    assert entry["role"] == "eval data" and entry["path"] == str(held)
    sources, _ = training_files(lineage(resolve_model(out, "eval")))
    assert [s.name for s in sources] == [str(chat_data)]  # eval's contamination check reads only what trained
    # other held-out records: another artifact (its figures differ); the same ones: up to date
    assert sft.run(tiny_model, chat_data, tmp_path / "sft", small(max_steps=2, eval_data=str(held))) == out
    write_jsonl(held, chat_records(5, seed=10))
    with pytest.raises(LLMForgeError, match="--force"):
        sft.run(tiny_model, chat_data, tmp_path / "sft", small(max_steps=2, eval_data=str(held)))


def test_held_out_settings_that_cannot_work_are_refused_in_one_line(tmp_path, tiny_model, chat_data):
    from helpers import grpo_records, llmforge

    completions = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "1 + 1 =", "completion": " 2"}])
    wrong = llmforge(
        "sft", tiny_model, chat_data, "-o", tmp_path / "a", "--eval-data", completions, check=False
    )
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert (f"error: {completions}:1: --eval-data holds 'prompt-completion' records, the training data "
            f"'messages' ({chat_data}:1)") in " ".join(wrong.stderr.split())  # fmt: skip
    both = llmforge("sft", tiny_model, chat_data, "-o", tmp_path / "b", "--eval-data", chat_data,
                    "--eval-fraction", "0.1", check=False)  # fmt: skip
    assert (
        both.returncode == 2 and "--eval-data and --eval-fraction both give held-out records" in both.stderr
    )
    two = write_jsonl(tmp_path / "two.jsonl", chat_records(2))
    none_left = llmforge("sft", tiny_model, two, "-o", tmp_path / "c", "--eval-fraction", "0.9", check=False)
    assert (
        none_left.returncode == 2 and "holds out 2 of 2 records, leaving none to train on" in none_left.stderr
    )
    prompts = write_jsonl(tmp_path / "prompts.jsonl", grpo_records(4))
    grpo = llmforge(
        "grpo", tiny_model, prompts, "-o", tmp_path / "d", "--set", "eval_fraction=0.5", check=False
    )
    assert grpo.returncode == 2 and "grpo has no held-out loss" in grpo.stderr
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_sft_lora_resumes_after_an_interruption(tmp_path, tiny_model, chat_data):
    from transformers import AutoModelForCausalLM

    config = small(max_steps=4, save_steps=2, lora=LoraSettings(enabled=True))
    with pytest.raises(KeyboardInterrupt):
        sft.run(tiny_model, chat_data, tmp_path / "lora", config, callbacks=[StopAtStep(3)])
    checkpoint = tmp_path / "lora.partial" / "checkpoints" / "checkpoint-2"
    assert not (tmp_path / "lora").exists()
    # issue 16: resume state is loaded with pickle, so complete.json lists every file's sha256 and a changed or
    # added file stops the resume before anything is loaded
    listed = json.loads((checkpoint / "complete.json").read_text())["files"]
    assert {"optimizer.pt", "rng_state.pth", "adapter_model.safetensors"} <= set(listed)
    optimizer = (checkpoint / "optimizer.pt").read_bytes()
    (checkpoint / "optimizer.pt").write_bytes(optimizer + b"\0")
    with pytest.raises(
        InputError, match=r"checkpoint-2/optimizer.pt: changed since the checkpoint was written"
    ):
        sft.run(tiny_model, chat_data, tmp_path / "lora", config)
    (checkpoint / "optimizer.pt").write_bytes(optimizer)

    out = sft.run(tiny_model, chat_data, tmp_path / "lora", config)
    artifact = Artifact.open(out)
    assert artifact.kind == "adapter"
    assert (artifact.stats["resumed_from_step"], artifact.stats["steps"]) == (2, 4)
    assert 0 < artifact.stats["trainable_share"] < 0.5
    assert artifact.config["lora"]["alpha"] == 32
    assert artifact.extra["base_model"]["fingerprint"] == Artifact.open(tiny_model).fingerprint
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model.resolve()
    )
    model = AutoModelForCausalLM.from_pretrained(out)  # transformers applies the adapter on its base
    assert hasattr(model, "peft_config")


def test_sft_merge_writes_the_model_the_adapter_gives(tmp_path, tiny_model, chat_data):
    import torch
    from transformers import AutoModelForCausalLM

    adapter = sft.run(tiny_model, chat_data, tmp_path / "adapter", small(lora=LoraSettings(enabled=True)))
    merged = sft.run(tiny_model, chat_data, tmp_path / "merged", small(lora=LoraSettings(merge=True)))
    artifact = Artifact.open(merged)
    assert artifact.kind == "model" and 0 < artifact.stats["trainable_share"] < 0.5  # trained as LoRA
    assert not (merged / "adapter_config.json").exists() and artifact.verify() == []
    ids = torch.tensor([[1, 7, 12, 30, 5, 9]])
    with torch.no_grad():
        base, on_base, folded = (AutoModelForCausalLM.from_pretrained(path)(ids).logits
                                 for path in (tiny_model, adapter, merged))  # fmt: skip
    torch.testing.assert_close(folded, on_base, rtol=1e-4, atol=1e-4)  # the adapter folded into its base
    assert not torch.allclose(folded, base, atol=1e-4)


def finite(weights_file) -> bool:
    from safetensors.torch import load_file

    return all(bool(tensor.isfinite().all()) for tensor in load_file(weights_file).values())


def test_sft_stops_at_the_step_whose_learning_rate_overflows_the_weights(
    tmp_path, tiny_model, chat_data, capfd
):
    """Issue 16: with a learning rate the weights cannot take, sft exited 0 with `loss 0.0` logged and every
    weight NaN. It stops at the step that overflows, publishes nothing and keeps the checkpoint before it, which
    the same command resumes from (and overflows again)."""
    config = small(max_steps=4, save_steps=1, learning_rate=1e30, warmup_ratio=0.0)
    out = tmp_path / "sft"
    for _ in range(2):
        with pytest.raises(Diverged) as failure:
            sft.run(tiny_model, chat_data, out, config)
        message = str(failure.value)
        assert message.startswith("sft diverged at step 2: ") and ("nan" in message or "inf" in message)
        assert "checkpoint-1 (step 1)" in message and "Lower the learning rate (now 1e+30)" in message
    assert "resuming from checkpoint-1 (step 1)" in capfd.readouterr().err
    assert not out.exists()
    checkpoints = tmp_path / "sft.partial" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-1"]
    assert (checkpoints / "checkpoint-1" / "complete.json").is_file()
    assert finite(checkpoints / "checkpoint-1" / "model.safetensors")
    assert [r["step"] for r in read_jsonl(tmp_path / "sft.partial" / "metrics.jsonl")] == [1]


def test_sft_names_the_step_whose_loss_is_not_finite(tmp_path, tiny_model, chat_data):
    config = small(max_steps=5, save_steps=2)
    with pytest.raises(Diverged, match=r"^sft diverged at step 3: the training loss is nan\. Nothing is published; "
                                       r"the last complete checkpoint, checkpoint-2 \(step 2\), stays in "):  # fmt: skip
        sft.run(tiny_model, chat_data, tmp_path / "sft", config, callbacks=[PoisonWeights(3)])
    checkpoint = tmp_path / "sft.partial" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "complete.json").is_file() and finite(checkpoint / "model.safetensors")


@pytest.mark.parametrize("lora", [False, True], ids=["model", "adapter"])
def test_sft_never_publishes_non_finite_weights(tmp_path, tiny_model, chat_data, lora):
    """The last check, on the weights about to be written, whatever happened after the last step."""
    config = small(max_steps=1, lora=LoraSettings(enabled=lora))
    with pytest.raises(LLMForgeError, match=r"^sft: the trained weights hold inf or NaN values \("):
        sft.run(tiny_model, chat_data, tmp_path / "sft", config, callbacks=[PoisonWeights(None)])
    assert not (tmp_path / "sft").exists()
    assert not (tmp_path / "sft.partial" / "artifact.json").exists()


def test_sft_refuses_an_input_model_with_non_finite_weights(tmp_path, tiny_model, chat_data):
    import shutil

    from safetensors.torch import load_file, save_file

    # a Hugging Face directory: an artifact's files would no longer match its hashes
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns("artifact.json"))
    weights = load_file(model / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][0, 0] = float("inf")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"^sft: the input model already holds inf or NaN weights "
                                         r"\(model\.layers\.0\.mlp\.up_proj\.weight\) before any training"):  # fmt: skip
        sft.run(model, chat_data, tmp_path / "sft", small(max_steps=1))


def _trainer(tmp_path, tiny_model, records, shape, **settings):
    """The trainer sft builds, on the rows its data path prepares (chats pre-tokenized with their masks)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmforge.data.chat_masks import resolve_template
    from llmforge.data.records import Records
    from llmforge.model.loading import resolve_model
    from llmforge.train.posttrain import stop_ids

    config = sft.Config(**settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = resolve_template(tokenizer)
    prepared = Records(records, shape, [f"data.jsonl:{n + 1}" for n in range(len(records))])
    rows = sft.prepare(prepared, tokenizer, config, template, stop_ids(resolve_model(tiny_model, "sft"), tokenizer,
                                                                       template))  # fmt: skip
    trainer = sft.make_trainer(config=config, model=AutoModelForCausalLM.from_pretrained(tiny_model),
                               tokenizer=tokenizer, dataset=to_dataset(rows), eval_dataset=None, peft_config=None,
                               arguments=training_arguments(config, tmp_path), callbacks=[], shape=shape)  # fmt: skip
    return trainer, tokenizer


def test_sft_loss_mask_covers_only_assistant_tokens(tmp_path, tiny_model):
    records = chat_records(4)
    records[1]["messages"].insert(2, {"role": "assistant", "content": "", "tool_calls": [
        {"name": "add", "arguments": {"a": 1, "b": 2}}]})  # fmt: skip
    records[1]["messages"].insert(3, {"role": "tool", "content": "3"})
    trainer, tokenizer = _trainer(tmp_path, tiny_model, records, "messages", max_length=256)
    for record, row in zip(records, trainer.train_dataset, strict=True):
        trained = [
            token for token, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
        ]
        expected = ""
        for message in record["messages"]:
            if message["role"] == "assistant":
                calls = "".join('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
                                for _ in message.get("tool_calls") or [])  # fmt: skip
                expected += message["content"] + calls + "<|im_end|>"
        assert tokenizer.decode(trained) == expected


def test_sft_trains_on_each_chat_as_written(tmp_path, tiny_model):
    """Records that differ in their tool calls' arguments, with tools only on a later record: each trains on its own
    rendering (Arrow alone would drop the later `tools` and give every call the other calls' argument keys)."""
    weather = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
    calls = [
        {"name": "add", "arguments": {"a": 1, "b": 2}},
        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
    ]
    records = chat_records(2) + [
        {"messages": [{"role": "user", "content": "1 + 2?"}, {"role": "assistant", "content": "", "tool_calls": calls[:1]},
                      {"role": "tool", "content": "3"}, {"role": "assistant", "content": "3"}]},
        {"tools": [weather], "messages": [{"role": "user", "content": "Weather in Oslo?"},
                                          {"role": "assistant", "content": "", "tool_calls": calls[1:]}]},
    ]  # fmt: skip
    items = read_records(
        write_jsonl(tmp_path / "tools.jsonl", records), "sft", sft.validator(sft.Config())
    ).items
    trainer, tokenizer = _trainer(tmp_path, tiny_model, items, "messages", max_length=256)
    for item, row in zip(items, trainer.train_dataset, strict=True):
        tools = json.loads(item["tools"]) if item.get("tools") else None
        expected = tokenizer.apply_chat_template(
            item["messages"], tools=tools, tokenize=True, return_dict=True
        )
        assert row["input_ids"] == expected["input_ids"]
    rendered = tokenizer.decode(trainer.train_dataset[3]["input_ids"])
    assert '"name": "weather"' in rendered and '{"city": "Oslo"}' in rendered and "null" not in rendered


def test_sft_prompt_completion_trains_on_the_completion_and_packing_fills_blocks(tmp_path, tiny_model):
    records = [{"prompt": f"Question {n}: what follows {n}?", "completion": f" {n + 1}"} for n in range(6)]
    trainer, tokenizer = _trainer(tmp_path, tiny_model, records, "prompt-completion", max_length=64)
    for record, row in zip(records, trainer.train_dataset, strict=True):
        trained = [
            token for token, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
        ]
        assert tokenizer.decode(trained) == record["completion"] + tokenizer.eos_token

    texts = [{"text": f"Document number {n} holds a few words of text."} for n in range(20)]
    trainer, _ = _trainer(tmp_path, tiny_model, texts, "text", max_length=32, packing=True)
    lengths = [len(row["input_ids"]) for row in trainer.train_dataset]
    assert lengths[:-1] == [32] * (len(lengths) - 1) and len(lengths) < len(texts)


@pytest.mark.slow
def test_sft_under_deepspeed_zero3_with_two_cpu_processes(tmp_path, tiny_model, chat_data):
    from transformers import AutoModelForCausalLM

    config = small(batch_size=2, zero=3, offload="cpu", nproc=2)
    out = sft.run(tiny_model, chat_data, tmp_path / "zero3", config)
    artifact = Artifact.open(out)
    assert artifact.kind == "model" and artifact.stats["steps"] == 3
    assert artifact.stats["total_parameters"] == Artifact.open(tiny_model).stats["parameters"]
    assert artifact.stats["loss_final"] < artifact.stats["loss_first"]
    assert (
        not list(out.glob("*.pt")) and (out / "model.safetensors").is_file()
    )  # DeepSpeed shards stay resume state
    AutoModelForCausalLM.from_pretrained(out)
