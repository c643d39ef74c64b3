"""The open model families users bring, end to end: import, LoRA SFT in the family's own chat template, and a
greedy answer through `llmforge serve` equal to transformers' own generation on the same adapter and prompt.

The real checkpoints cannot be downloaded here, so each family is a tiny random model of its architecture
(transformers' class: Gemma 3 with its sliding-window layers, Phi-3's fused projections, Qwen 3's QK-norm) with the
family's original chat template on a stand-in tokenizer (families.py). The output directories are named as users
name them ("sft-llama3.1"): a served adapter's name is not a Python module name.
"""

import pytest
from families import ARCHITECTURES, family_model
from helpers import chat_records, write_jsonl
from test_serve import start_server

from llmforge.artifacts import Artifact
from llmforge.errors import InputError
from llmforge.stages import import_model, sft
from llmforge.train.posttrain import LoraSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

QUESTION = [{"role": "system", "content": "Answer with the number only."},
            {"role": "user", "content": "What is 3 + 4?"}]  # fmt: skip


@pytest.mark.parametrize("family", list(ARCHITECTURES))
def test_a_family_imports_fine_tunes_and_answers_through_the_server(family, tiny_tokenizer_dir, tmp_path):
    import torch
    from openai import OpenAI

    from llmforge.model.loading import load_model, load_tokenizer, resolve_model

    source, architecture = family_model(family, tiny_tokenizer_dir, tmp_path / family)
    base = import_model.run(source, tmp_path / f"{family}-base")
    assert Artifact.open(base).stats["architecture"] == architecture
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_records(16))
    config = sft.Config(
        lora=LoraSettings(enabled=True), max_steps=2, batch_size=4, max_length=192, learning_rate=1e-2
    )
    adapter = sft.run(base, chats, tmp_path / f"sft-{family}", config)
    assert (
        Artifact.open(adapter).kind == "adapter" and Artifact.open(adapter).stats["chat_template"] == "model"
    )

    server = start_server(adapter, log_dir=tmp_path)
    try:
        client = OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model=f"sft-{family}", messages=QUESTION, max_tokens=8,
                                               temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    finally:
        server.stop()

    # the same adapter on its base in transformers: the family's template, greedy
    served = resolve_model(adapter, "serve")
    tokenizer = load_tokenizer(served)
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    model = load_model(served).eval()
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    assert reply.usage.prompt_tokens == len(prompt) and reply.usage.completion_tokens == 8
    assert reply.choices[0].message.content == tokenizer.decode(
        output[0, len(prompt) :], skip_special_tokens=True
    )


def test_lora_on_a_mixture_of_experts_takes_no_dropout(tiny_tokenizer_dir, tmp_path, capsys):
    """peft's LoRA on expert tensors takes no dropout: the default becomes 0 (and is recorded so); a dropout asked
    for is one line before any work."""
    source, _ = family_model("qwen3-moe", tiny_tokenizer_dir, tmp_path / "qwen3-moe")
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_records(8))
    asked = sft.Config(
        lora=LoraSettings(enabled=True, dropout=0.1), max_steps=1, batch_size=4, max_length=192
    )
    with pytest.raises(InputError, match=r"lora.dropout 0.1: peft's LoRA on the experts and router of .* takes no "
                                         "dropout; set lora.dropout=0"):  # fmt: skip
        sft.run(source, chats, tmp_path / "refused", asked)
    assert not (tmp_path / "refused").exists()
    config = sft.Config(lora=LoraSettings(enabled=True), max_steps=1, batch_size=4, max_length=192)
    adapter = sft.run(source, chats, tmp_path / "sft", config)
    assert "lora.dropout 0:" in capsys.readouterr().err
    assert Artifact.open(adapter).config["lora"]["dropout"] == 0.0
    # attention projections only: LoRA's usual dropout
    attention = sft.Config(lora=LoraSettings(enabled=True, target_modules=["q_proj", "v_proj"]), max_steps=1,
                           batch_size=4, max_length=192)  # fmt: skip
    assert (
        Artifact.open(sft.run(source, chats, tmp_path / "attn", attention)).config["lora"]["dropout"] == 0.05
    )
