"""Preference optimisation: align a model to chosen-over-rejected answers (DPO and the losses TRL offers beside it).

Records are `prompt`/`chosen`/`rejected` (strings, or chat messages rendered with the model's chat template); for
`--loss kto` also unpaired `prompt`/`completion`/`label` (true = good). The reference is the input model, frozen
(under LoRA: the base with the new adapter switched off, or a frozen copy of a continued adapter). `--loss` picks:
DPOTrainer's sigmoid (DPO), ipo, hinge, robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired,
apo_zero, apo_down, discopop, sigmoid_norm; kto (KTOTrainer); orpo and simpo (TRL 1.16 keeps ORPOTrainer and
CPOTrainer, which implements SimPO, in trl.experimental: reference-free, and their API may change).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NotRequired

from pydantic import Field, model_validator

from llmforge.data.records import Records, check_answer, check_prompt
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

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")  # fmt: skip
Loss = Literal[
    "sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm", "kto", "orpo", "simpo",
]  # fmt: skip


class Config(PostTrainConfig):
    loss: Loss = Field(
        "sigmoid",
        description="Preference loss: sigmoid (DPO), ipo, hinge, robust... (DPOTrainer), kto (unpaired labels "
        "allowed), orpo, simpo (reference-free, trl.experimental)",
    )
    beta: float = Field(
        0.1, gt=0, description="How far the policy may move from the reference (IPO: tau; ORPO: lambda)"
    )
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Robust DPO / EXO label smoothing")
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of an SFT (negative log-likelihood) loss on the chosen answers added to the preference "
        "loss, as in RPO: it keeps the chosen answers' likelihood from falling with the rejected ones'; "
        "0 = off; DPOTrainer losses only (orpo has its own)",
    )

    @model_validator(mode="after")
    def _sft_weight_where_it_applies(self) -> Config:
        if self.sft_weight and self.loss in ("kto", "orpo", "simpo"):
            own = (
                " (orpo has an SFT term of its own; beta weighs the odds ratio against it)"
                if self.loss == "orpo"
                else ""
            )
            raise ValueError(f"sft_weight applies to DPOTrainer's losses, not {self.loss}{own}")
        return self


class Stats(PostTrainStats):
    """What dpo writes in its manifest's stats (read by `llmforge card`), from TRL's log: first and last logged
    values (`train.stats`) and the last logged implicit rewards."""

    loss_first: float
    loss_final: float
    accuracy_first: NotRequired[float]  # share of pairs whose chosen answer gets the higher reward (not KTO)
    accuracy_final: NotRequired[float]
    margin_first: NotRequired[float]  # chosen minus rejected reward
    margin_final: NotRequired[float]
    rewards_chosen: NotRequired[float]
    rewards_rejected: NotRequired[float]
    eval_loss_first: NotRequired[float]  # on the held-out pairs (--eval-fraction / --eval-data)
    eval_loss_final: NotRequired[float]
    eval_accuracy_first: NotRequired[float]
    eval_accuracy_final: NotRequired[float]
    eval_margin_first: NotRequired[float]
    eval_margin_final: NotRequired[float]


def validator(config: Config):
    def validate(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "prompt" not in record:
            raise ValueError(
                "needs a 'prompt' (with 'chosen' and 'rejected', or for kto 'completion' and 'label')"
            )
        prompt = check_prompt(record["prompt"])
        chat = isinstance(prompt, list)
        if "chosen" in record or "rejected" in record:
            for name in ("chosen", "rejected"):
                if name not in record:
                    raise ValueError(f"has '{'rejected' if name == 'chosen' else 'chosen'}' but no '{name}'")
            chosen = check_answer(record["chosen"], "chosen", chat)
            rejected = check_answer(record["rejected"], "rejected", chat)
            if chosen == rejected:
                raise ValueError("'chosen' and 'rejected' are identical: the pair expresses no preference")
            return "paired", {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if "completion" in record:
            if config.loss != "kto":
                raise ValueError(f"an unpaired (completion/label) record; --loss {config.loss} needs 'chosen' and "
                                 "'rejected' pairs, only --loss kto learns from unpaired labels")  # fmt: skip
            if not isinstance(record.get("label"), bool):
                raise ValueError("'label' must be true (a good completion) or false (a bad one)")
            completion = check_answer(record["completion"], "completion", chat)
            return "unpaired", {"prompt": prompt, "completion": completion, "label": record["label"]}
        raise ValueError("needs 'chosen' and 'rejected' (or, for kto, 'completion' and 'label')")

    return validate


def check(records: Records, tokenizer, config: Config) -> None:
    if records.shape == "unpaired" and len({r["label"] for r in records.items}) < 2:
        raise InputError("kto needs both good (label true) and bad (label false) completions; "
                         f"every label in the dataset is {records.items[0]['label']}")  # fmt: skip


def make_trainer(
    config: Config, model, tokenizer, dataset, eval_dataset, peft_config, arguments, callbacks, shape
):
    common = dict(model=model, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                  peft_config=peft_config, callbacks=callbacks)  # fmt: skip
    if config.loss == "kto":
        from trl import KTOConfig, KTOTrainer
        from trl.data_utils import unpair_preference_dataset

        if shape == "paired":  # each pair gives one good and one bad completion
            common["train_dataset"] = unpair_preference_dataset(dataset)
            if eval_dataset is not None:
                common["eval_dataset"] = unpair_preference_dataset(eval_dataset)
        args = KTOConfig(**arguments, beta=config.beta, max_length=config.max_length)
        return KTOTrainer(args=args, **common)
    if config.loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**arguments, beta=config.beta, max_length=config.max_length)
        return ORPOTrainer(args=args, **common)
    if config.loss == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**arguments, loss_type="simpo", cpo_alpha=0.0, beta=config.beta,
                         simpo_gamma=config.simpo_gamma, max_length=config.max_length)  # fmt: skip
        return CPOTrainer(args=args, **common)
    from trl import DPOConfig, DPOTrainer

    # TRL sums the weighted losses of loss_type; "sft" is the NLL of the chosen answers (RPO's term)
    losses, weights = (
        ([config.loss, "sft"], [1.0, config.sft_weight]) if config.sft_weight else ([config.loss], None)
    )
    args = DPOConfig(**arguments, beta=config.beta, loss_type=losses, loss_weights=weights,
                     label_smoothing=config.label_smoothing, max_length=config.max_length)  # fmt: skip
    return DPOTrainer(args=args, **common)


def summarize(history: list[dict]) -> dict[str, Any]:
    """Preference accuracy and reward margins at the first and the last logged step (KTO has no accuracy)."""
    return {**first_final(history, "loss"), **first_final(history, "rewards/accuracies", "accuracy"),
            **first_final(history, "rewards/margins", "margin"), **final_value(history, "rewards/chosen"),
            **final_value(history, "rewards/rejected"), **first_final(history, "eval_loss"),
            **first_final(history, "eval_rewards/accuracies", "eval_accuracy"),
            **first_final(history, "eval_rewards/margins", "eval_margin")}  # fmt: skip


def describe(config: Config) -> list[tuple[str, str]]:
    reference = "none (reference-free)" if config.loss in ("orpo", "simpo") else "the input model, frozen"
    sft = f" + {config.sft_weight:g} x SFT on the chosen answers" if config.sft_weight else ""
    return [("objective", f"{config.loss}{sft}, beta {config.beta:g}"), ("reference", reference)]


STAGE = Stage(name="dpo", module="dpo", validate=validator, make_trainer=make_trainer, summarize=summarize,
              default_rates=(1e-6, 5e-6), check=check, describe=describe)  # fmt: skip


def run(model: str | Path, data: str | Path, out: str | Path, config: Config | None = None, force: bool = False,
        callbacks: list | None = None, dry_run: bool = False) -> Path | None:  # fmt: skip
    """Align `model` to the preferences in `data`; returns the model (or adapter) artifact's path (None for a
    dry run)."""
    return run_posttrain(STAGE, config or Config(), model, data, out, force=force, callbacks=callbacks,
                         dry_run=dry_run)  # fmt: skip


FLAGS = (
    Flag("loss"),
    Flag("beta"),
    Flag("sft_weight"),
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
    """Preference optimisation (DPO, IPO, KTO, ORPO, SimPO...), full or LoRA/QLoRA, DeepSpeed-ready."""
    run(model, data, output, config, force=force, dry_run=dry_run)
