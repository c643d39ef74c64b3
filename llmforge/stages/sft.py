"""Supervised fine-tuning: teach a base model the assistant's manners on chat, prompt/completion or plain text.

Chats are rendered with the model's own chat template (the one serving will use), a file given with
`--chat-template`, or a default for a model without one, and the loss falls on the assistant's tokens only, its
end-of-turn token included: llmforge.data.chat_masks finds them by rendering each conversation prefix, so any
template works, with or without `{% generation %}` markers, and TRL gets the chats pre-tokenized with their masks.
Prompt/completion records train on the completion only. Full fine-tuning, or LoRA / QLoRA with `--lora` /
`--qlora` (an adapter artifact; `--merge` folds it into a full model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NotRequired

from pydantic import Field

from llmforge import machine
from llmforge.data.records import Records, check_answer, check_messages, check_prompt, check_text
from llmforge.errors import InputError
from llmforge.options import EVAL_FLAGS, POSTTRAIN_FLAGS, Flag, TrainedModel, TrainingData, stage_command
from llmforge.train.posttrain import (
    PostTrainConfig,
    Stage,
    final_value,
    first_final,
    run_posttrain,
)
from llmforge.train.stats import PostTrainStats

CHAT_SHAPES = ("messages", "prompt-completion chat")


class Config(PostTrainConfig):
    epochs: float = Field(2.0, gt=0, description="Passes over the dataset (1-3 avoids overfitting)")
    packing: bool = Field(False, description="Pack several records into each max_length sequence")
    assistant_only_loss: bool = Field(
        True, description="Chat records: loss on the assistant's tokens only (end-of-turn token included)"
    )
    completion_only_loss: bool = Field(
        True, description="prompt/completion records: loss on the completion only"
    )


class Stats(PostTrainStats):
    """What sft writes in its manifest's stats (read by `llmforge card`), from TRL's log."""

    loss_first: float  # training loss at the first and the last logged step (`train.stats`)
    loss_final: float
    token_accuracy: float  # share of the trained tokens predicted right, last logged
    tokens_trained: int  # tokens seen by the loss so far, last logged
    # on the held-out records (--eval-fraction / --eval-data): the loss first and last measured
    eval_loss_first: NotRequired[float]
    eval_loss_final: NotRequired[float]
    eval_token_accuracy: NotRequired[float]  # share of the held-out trained-on tokens predicted right, last


def validator(config: Config):
    def validate(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "messages" in record:
            normalised = {"messages": check_messages(record["messages"])}
            tools = record.get("tools")
            if tools is not None:
                if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                    raise ValueError("'tools' must be a list of tool (function) descriptions")
                normalised["tools"] = json.dumps(tools)  # one Arrow type whatever the tool schemas look like
            return "messages", normalised
        if "prompt" in record or "completion" in record:
            missing = "completion" if "prompt" in record else "prompt"
            if missing not in record:
                raise ValueError(
                    f"has '{'prompt' if missing == 'completion' else 'completion'}' but no '{missing}'"
                )
            prompt = check_prompt(record["prompt"])
            chat = isinstance(prompt, list)
            completion = check_answer(record["completion"], "completion", chat)
            return ("prompt-completion chat" if chat else "prompt-completion"), {
                "prompt": prompt,
                "completion": completion,
            }
        if "text" in record:
            return "text", {"text": check_text(record["text"], "text")}
        raise ValueError(
            "needs 'messages' (a chat), 'prompt' and 'completion', or 'text'; "
            f"found {', '.join(sorted(record)) or 'no fields'}"
        )

    return validate


def check(records: Records, tokenizer, config: Config) -> None:
    """What only the tokenizer can tell: the loss mask of every prompt/completion record is not empty (chats are
    checked as they are tokenized, in `prepare`)."""
    if records.shape == "prompt-completion" and config.completion_only_loss:
        for record, location in zip(records.items, records.locations, strict=True):
            if len(tokenizer(record["prompt"])["input_ids"]) >= config.max_length:
                raise InputError(
                    f"{location}: the prompt alone fills max_length ({config.max_length} tokens); "
                    "the loss mask of its completion is empty"
                )


def prepare(records: Records, tokenizer, config: Config, template, stop_ids: list[int]) -> list[dict]:
    """Chats as TRL's SFTTrainer takes them pre-tokenized: `input_ids` and `assistant_masks` (TRL builds the labels
    from the mask and truncates to max_length). A record whose mask is empty within max_length is refused."""
    if records.shape not in CHAT_SHAPES:
        return records.items
    from llmforge.data.chat_masks import chat_examples

    completion_only = records.shape == "prompt-completion chat" and config.completion_only_loss
    examples = chat_examples(records.items, records.locations, tokenizer, template, stop_ids, config.max_length,
                             completion_only=completion_only)  # fmt: skip
    if not (config.assistant_only_loss or completion_only):  # every token of the rendering
        return [{"input_ids": example["input_ids"]} for example in examples]
    return examples


def make_trainer(
    config: Config, model, tokenizer, dataset, eval_dataset, peft_config, arguments, callbacks, shape
):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **arguments,
        max_length=config.max_length,
        packing=config.packing,
        # bfd packing needs FlashAttention to keep packed records apart; without it, wrap into fixed blocks
        packing_strategy="bfd" if machine.has_flash_attention() else "wrapped",
        # chats come pre-tokenized with their masks (`prepare`): TRL's own masking would need {% generation %}
        assistant_only_loss=False,
        completion_only_loss=config.completion_only_loss if shape == "prompt-completion" else None,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def summarize(history: list[dict]) -> dict[str, Any]:
    return {
        **first_final(history, "loss"),
        **final_value(history, "mean_token_accuracy", "token_accuracy"),
        **final_value(history, "num_tokens", "tokens_trained"),
        **first_final(history, "eval_loss"),
        **final_value(history, "eval_mean_token_accuracy", "eval_token_accuracy"),
    }


def describe(config: Config) -> list[tuple[str, str]]:
    loss = "assistant tokens (chats), completions (prompt/completion)"
    if not (config.assistant_only_loss and config.completion_only_loss):
        loss = "every token" if not (config.assistant_only_loss or config.completion_only_loss) else (
            "assistant tokens (chats), every token otherwise" if config.assistant_only_loss
            else "completions (prompt/completion), every token otherwise")  # fmt: skip
    return [("loss on", loss), ("packing", "on" if config.packing else "off")]


STAGE = Stage(
    name="sft",
    module="sft",
    validate=validator,
    make_trainer=make_trainer,
    summarize=summarize,
    default_rates=(2e-5, 2e-4),
    check=check,
    describe=describe,
    prepare=prepare,
)


def run(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    config: Config | None = None,
    force: bool = False,
    callbacks: list | None = None,
    dry_run: bool = False,
) -> Path | None:
    """Fine-tune `model` on `data`; returns the model (or adapter) artifact's path (None for a dry run)."""

    return run_posttrain(STAGE, config or Config(), model, data, out, force=force, callbacks=callbacks,
                         dry_run=dry_run)  # fmt: skip


FLAGS = (
    Flag("packing"),
    *POSTTRAIN_FLAGS,
    *EVAL_FLAGS,
)


@stage_command(FLAGS)
def command(
    model: TrainedModel,
    data: TrainingData,
    output: Path,
    config: Config,
    force: bool = False,
    dry_run: bool = False,
) -> None:
    """Supervised fine-tuning (chat, prompt/completion or text), full or LoRA/QLoRA, DeepSpeed-ready."""
    run(model, data, output, config, force=force, dry_run=dry_run)
