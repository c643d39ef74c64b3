"""A real chat model fine-tuned with its own template: LoRA SFT of SmolLM2-135M-Instruct on multi-turn chats.

The template has no {% generation %} markers; the masks come from llmforge.data.chat_masks and TRL's SFTTrainer
takes them as a pre-tokenized dataset. A few steps, short sequences: about 5 CPU-seconds a step on one thread.
"""

from __future__ import annotations

import random

import pytest
import torch

from llmforge.data.chat_masks import chat_examples, resolve_template, stop_token_ids

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


def test_lora_sft_on_multi_turn_chats_lowers_the_loss_and_the_adapter_reloads(smollm2, tmp_path):
    import datasets
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    template = resolve_template(tokenizer)
    stops = stop_token_ids(tokenizer, smollm2, template)

    def examples(count: int, seed: int) -> list[dict]:
        chats = arithmetic_chats(count, seed)
        return chat_examples(chats, [f"chat {i}" for i in range(count)], tokenizer, template, stops, 128)

    train, held_out = examples(12, seed=0), examples(4, seed=1)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                     learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, max_length=128,
                     assistant_only_loss=False,  # the masks are in the dataset: TRL turns them into labels
                     use_cpu=True, bf16=False, save_strategy="no", report_to="none", disable_tqdm=True,
                     logging_steps=1, dataloader_num_workers=0, seed=0)  # fmt: skip
    torch.manual_seed(0)  # the LoRA weights are drawn when the trainer wraps the model
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(train),
                         processing_class=tokenizer, peft_config=lora)  # fmt: skip
    # TRL trains on exactly our assistant tokens
    prepared = {tuple(row["input_ids"]): row["labels"] for row in trainer.train_dataset}
    for example in train:
        labels = prepared[tuple(example["input_ids"])]
        assert [label != -100 for label in labels] == [bool(m) for m in example["assistant_masks"]]

    before = masked_loss(trainer.model, held_out)
    trainer.train()
    after = masked_loss(trainer.model, held_out)
    assert after < 0.75 * before, (before, after)

    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2), tmp_path / "adapter")
    assert masked_loss(reloaded, held_out) == pytest.approx(after, rel=1e-4)
