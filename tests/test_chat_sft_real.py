"""A real chat model fine-tuned with its own template: LoRA SFT of SmolLM2-135M-Instruct on multi-turn chats.

The template has no {% generation %} markers; the masks come from llmforge.data.chat_masks and TRL's SFTTrainer
takes them as a pre-tokenized dataset. A few steps, short sequences: about 5 CPU-seconds a step on one thread.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import write_jsonl
from test_chat_template import TrainData

from llmforge.artifacts import Artifact
from llmforge.data.chat_masks import chat_examples, resolve_template, stop_token_ids
from llmforge.stages import sft
from llmforge.train.posttrain import LoraSettings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2"), pytest.mark.usefixtures("one_thread")]


def arithmetic_chats(count: int, seed: int) -> list[dict]:
    """Two-turn chats with a system prompt, answered in one fixed style the model does not use by itself."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 5)
        chats.append({"messages": [
            {"role": "system", "content": "Answer with the equation only."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a} + {b} = {a + b}"},
            {"role": "user", "content": f"Times {c}?"},
            {"role": "assistant", "content": f"{a + b} * {c} = {(a + b) * c}"},
        ]})  # fmt: skip
    return chats


def masked_loss(model, examples: list[dict]) -> float:
    """Mean loss on the assistant tokens only."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([example["input_ids"]])
            labels = ids.masked_fill(torch.tensor([example["assistant_masks"]]) == 0, -100)
            total += model(input_ids=ids, labels=labels).loss.item()
    return total / len(examples)


def test_lora_sft_on_multi_turn_chats_lowers_the_loss_and_the_adapter_reloads(smollm2, tmp_path, capfd):
    """`llmforge sft MODEL chats.jsonl --lora` on the real model, through the stage: its template has no
    {% generation %} markers, the loss falls on exactly the replies and their <|im_end|>, the held-out loss drops and
    the adapter reloads with peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    template = resolve_template(tokenizer)
    assert "{% generation %}" not in template.text
    chats = arithmetic_chats(12, seed=0)
    held_out = chat_examples(arithmetic_chats(4, seed=1), [f"chat {i}" for i in range(4)], tokenizer, template,
                             stop_token_ids(tokenizer, smollm2, template), 128)  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    before = masked_loss(base, held_out)

    data = TrainData()
    config = sft.Config(lora=LoraSettings(enabled=True, rank=8, dropout=0.0), max_steps=3, batch_size=4,
                        learning_rate=1e-3, lr_scheduler="constant", warmup_ratio=0.0, max_length=128)  # fmt: skip
    out = sft.run(smollm2, write_jsonl(tmp_path / "chats.jsonl", chats), tmp_path / "adapter", config,
                  callbacks=[data])  # fmt: skip
    assert "chat template: the model's own" in capfd.readouterr().err
    trained = sorted(
        tokenizer.decode(
            [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        )
        for row in data.rows
    )
    replies = ["".join(m["content"] + "<|im_end|>" for m in chat["messages"] if m["role"] == "assistant")
               for chat in chats]  # fmt: skip
    assert trained == sorted(replies)
    assert Artifact.open(out).kind == "adapter" and Artifact.open(out).stats["steps"] == 3

    reloaded = PeftModel.from_pretrained(base, out)
    after = masked_loss(reloaded, held_out)
    assert after < 0.75 * before, (before, after)
    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template
