"""Reward modelling: train a model to score answers on chosen-over-rejected pairs, RLHF's second stage.

TRL's RewardTrainer puts a one-output linear head (a score) on the input model's decoder and trains it with the
Bradley-Terry loss, -log sigmoid(r(chosen) - r(rejected)), optionally less a per-pair `margin` (Llama 2) and with
a centering term (`--center-rewards`, Eq. 2 of arXiv:2312.09244). Records are `prompt`/`chosen`/`rejected`
(strings, or chat messages rendered by the model's chat template), or `chosen`/`rejected` alone that each hold
the whole conversation or text (Anthropic HH's layout). The output is a reward-model artifact, a Hugging Face
sequence-classification directory; with `--lora` the adapter and the head are merged into it. grpo scores with
it: `llmforge grpo POLICY prompts.jsonl --reward runs/rm`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NotRequired

from pydantic import Field

from llmforge.console import warn
from llmforge.data.records import Records, check_answer, check_messages, check_prompt, check_text
from llmforge.errors import InputError
from llmforge.options import EVAL_FLAGS, POSTTRAIN_FLAGS, Flag, TrainedModel, TrainingData, stage_command
from llmforge.train.posttrain import PostTrainConfig, Stage, final_value, first_final, run_posttrain
from llmforge.train.stats import PostTrainStats


class Config(PostTrainConfig):
    epochs: float = Field(
        1.0,
        gt=0,
        description="Passes over the pairs (InstructGPT trained its reward model for one: it overfits)",
    )
    max_length: int = Field(
        1024,
        ge=8,
        description="Longest chosen or rejected sequence in tokens; a longer pair is left out (said)",
    )
    center_rewards: float = Field(
        0.0,
        ge=0,
        description="Weight of a term that keeps the scores centred on zero (0.01 in arXiv:2312.09244); 0 = off",
    )


class Stats(PostTrainStats):
    """What reward writes in its manifest's stats (read by `llmforge card`), from TRL's log."""

    loss_first: float  # Bradley-Terry loss at the first and the last logged step (`train.stats`)
    loss_final: float
    accuracy_first: float  # share of pairs scored chosen above rejected
    accuracy_final: float
    margin_first: float  # mean score of chosen minus rejected
    margin_final: float
    mean_reward: float  # mean score over chosen and rejected, last logged
    eval_loss_first: NotRequired[float]  # on the held-out pairs (--eval-fraction / --eval-data)
    eval_loss_final: NotRequired[float]
    eval_accuracy_first: NotRequired[float]
    eval_accuracy_final: NotRequired[float]
    eval_margin_first: NotRequired[float]
    eval_margin_final: NotRequired[float]


def validator(config: Config):
    def validate(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        for name in ("chosen", "rejected"):
            if name not in record:
                raise ValueError(
                    f"needs '{name}' (with 'chosen' and 'rejected' an optional 'prompt' they answer)"
                )
        if "prompt" in record:
            prompt = check_prompt(record["prompt"])
            chat = isinstance(prompt, list)
            normalised = {"prompt": prompt, "chosen": check_answer(record["chosen"], "chosen", chat),
                          "rejected": check_answer(record["rejected"], "rejected", chat)}  # fmt: skip
            shape = "paired"
        else:  # the whole conversation (or text) in each, the prompt being their common start
            normalised = {name: _whole(record[name], name) for name in ("chosen", "rejected")}
            if isinstance(normalised["chosen"], list) != isinstance(normalised["rejected"], list):
                raise ValueError("'chosen' and 'rejected' must both be chats or both be text")
            shape = "implicit prompt"
        if normalised["chosen"] == normalised["rejected"]:
            raise ValueError("'chosen' and 'rejected' are identical: the pair expresses no preference")
        if record.get("margin") is not None:
            margin = record["margin"]
            if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin):
                raise ValueError(f"'margin' must be a finite number, not {margin!r}")
            normalised["margin"] = float(margin)
        return shape, normalised

    return validate


def _whole(value: Any, name: str) -> str | list[dict]:
    """A chosen or rejected conversation given whole: text, or messages that end with the assistant's answer."""
    if isinstance(value, list):
        messages = check_messages(value, name)
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"'{name}' must end with the assistant's answer (without a 'prompt', it holds the "
                             "whole conversation)")  # fmt: skip
        return messages
    return check_text(value, name)


def check(records: Records, tokenizer, config: Config) -> None:
    # TRL's collator reads a margin from every pair of a batch or from none
    margins = sum("margin" in record for record in records.items)
    if 0 < margins < len(records.items):
        first = next(loc for r, loc in zip(records.items, records.locations, strict=True)
                     if "margin" not in r)  # fmt: skip
        raise InputError(f"{first}: no 'margin', where other pairs have one; give every pair a margin or "
                         "none")  # fmt: skip


def within_length(records: Records, tokenizer, config: Config, template, stops) -> list[dict]:
    """The pairs RewardTrainer will train on: it drops any whose chosen or rejected sequence is longer than
    max_length, silently. llmforge says how many and which first (stats: `examples` of `records`), and refuses a
    dataset left empty."""
    from llmforge.rewards.model import reward_input_ids

    kept, dropped = [], []
    for record, location in zip(records.items, records.locations, strict=True):
        length = max(len(reward_input_ids(tokenizer, record.get("prompt"), record[name]))
                     for name in ("chosen", "rejected"))  # fmt: skip
        (kept if length <= config.max_length else dropped).append((record, location, length))
    if not dropped:
        return records.items
    _, location, length = dropped[0]
    if not kept:
        raise InputError(f"{location}: {length} tokens, over max_length ({config.max_length}), as is every "
                         "pair: raise --max-length")  # fmt: skip
    warn(f"{len(dropped):,} of {len(records.items):,} pairs are longer than max_length ({config.max_length}) and "
         f"are left out (the first: {location}, {length} tokens); raise --max-length to keep them")  # fmt: skip
    return [record for record, _, _ in kept]


def make_trainer(
    config: Config, model, tokenizer, dataset, eval_dataset, peft_config, arguments, callbacks, shape
):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**arguments, max_length=config.max_length,
                        center_rewards_coefficient=config.center_rewards or None)  # fmt: skip
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)  # fmt: skip
    if config.lora.qlora:
        _head_in_compute_dtype(trainer.model)
    return trainer


def _head_in_compute_dtype(model) -> None:
    """TRL 1.16 casts every trained parameter of a 4-bit model to bf16, the new score head too (peft trains it
    whole, a `modules_to_save` copy). LoRA layers cast their input to their own dtype; the head does not, so where
    the 4-bit layers compute in float32 (CPU) its bf16 weight meets float32 hidden states and the first step fails
    ("expected m1 and m2 to have the same dtype"). The head is kept in the compute dtype."""
    import torch

    from llmforge.train.posttrain import qlora_compute_dtype

    dtype = getattr(torch, qlora_compute_dtype())
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and ".modules_to_save." in name:
            parameter.data = parameter.data.to(dtype)


def summarize(history: list[dict]) -> dict[str, Any]:
    """Loss, preference accuracy and margin at the first and the last logged step, held out too."""
    return {**first_final(history, "loss"), **first_final(history, "accuracy"), **first_final(history, "margin"),
            **final_value(history, "mean_reward"), **first_final(history, "eval_loss"),
            **first_final(history, "eval_accuracy"), **first_final(history, "eval_margin")}  # fmt: skip


def describe(config: Config) -> list[tuple[str, str]]:
    centred = f" + {config.center_rewards:g} x mean squared score" if config.center_rewards else ""
    # (a pair's `margin`, where the records give one, is taken from the difference inside the sigmoid)
    return [("objective", f"Bradley-Terry: -log sigmoid(score(chosen) - score(rejected)){centred}"),
            ("head", "a new one-output linear score head on the decoder's last token")]  # fmt: skip


STAGE = Stage(name="reward", module="reward", validate=validator, make_trainer=make_trainer, summarize=summarize,
              default_rates=(1e-5, 1e-4), check=check, describe=describe, prepare=within_length,
              score_head=True)  # fmt: skip


def run(model: str | Path, data: str | Path, out: str | Path, config: Config | None = None, force: bool = False,
        callbacks: list | None = None, dry_run: bool = False) -> Path | None:  # fmt: skip
    """Train a reward model from `model` on the preference pairs in `data`; returns the reward-model artifact's
    path (None for a dry run)."""
    return run_posttrain(STAGE, config or Config(), model, data, out, force=force, callbacks=callbacks,
                         dry_run=dry_run)  # fmt: skip


FLAGS = (
    Flag("center_rewards"),
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
    """Reward modelling (Bradley-Terry on chosen/rejected pairs), full or LoRA/QLoRA, DeepSpeed-ready."""
    run(model, data, output, config, force=force, dry_run=dry_run)
