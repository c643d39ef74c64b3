import json

import pytest
from helpers import chat_records, stats_mismatches, write_jsonl
from transformers import TrainerCallback

from llmforge.artifacts import Artifact
from llmforge.data.records import read_records
from llmforge.files import read_jsonl
from llmforge.stages import sft
from llmforge.train.posttrain import LoraSettings
from llmforge.train.trl_job import to_dataset, training_arguments


class StopAtStep(TrainerCallback):
    """An interruption (Ctrl-C) right after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


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


def test_sft_lora_resumes_after_an_interruption(tmp_path, tiny_model, chat_data):
    from transformers import AutoModelForCausalLM

    config = small(max_steps=4, save_steps=2, lora=LoraSettings(enabled=True))
    with pytest.raises(KeyboardInterrupt):
        sft.run(tiny_model, chat_data, tmp_path / "lora", config, callbacks=[StopAtStep(3)])
    assert (tmp_path / "lora.partial" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "lora").exists()

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


def _trainer(tmp_path, tiny_model, records, shape, **settings):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = sft.Config(**settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = sft.make_trainer(config=config, model=AutoModelForCausalLM.from_pretrained(tiny_model),
                               tokenizer=tokenizer, dataset=to_dataset(records), peft_config=None,
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
