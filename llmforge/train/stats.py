"""The stats vocabulary of the training stages (pretrain, sft, dpo, grpo), written to their manifests and read by
`llmforge card`.

A logged series (loss, validation loss, preference accuracy, reward...) is summarised the same way everywhere:
`<series>_first` and `<series>_final` are its values at the first and at the last logged step, exactly as they
stand in the run's metrics.jsonl. Each logged value is what the trainer logged at that step: pretrain the loss of
that step, TRL the mean over the steps since its previous log (`logging_steps`). In pretrain a step logged twice
(replayed after a rewind or a resume) counts once, with its latest value.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


def first_and_final(values: list[float], series: str) -> dict[str, float]:
    """`<series>_first` and `<series>_final` of a series in logged order (nothing when it was never logged)."""
    if not values:
        return {}
    return {f"{series}_first": values[0], f"{series}_final": values[-1]}


class TrainingSummary(TypedDict):
    """What pretrain's metrics.jsonl adds up to (`train.metrics.summarize`)."""

    loss_first: float
    loss_final: float
    val_loss_first: NotRequired[float]  # with validation (eval.every > 0 and a validation split)
    val_loss_final: NotRequired[float]
    z_squared_first: NotRequired[float]  # with z_loss: the mean log(Z)^2
    z_squared_final: NotRequired[float]
    # a mixture of experts: the load-balancing loss (experts_per_token = balanced, experts = collapsed)
    router_balance_first: NotRequired[float]
    router_balance_final: NotRequired[float]
    tokens_per_s: float  # mean over the logged steps
    mfu: float | None  # mean model FLOPs utilisation; none without a known peak (CPU)
    peak_memory_gb: float


class PostTrainStats(TypedDict):
    """What sft, dpo and grpo all write; each stage's own `Stats` adds its summary of the TRL log."""

    records: int  # trained on: the dataset's, less any held out (--eval-fraction)
    eval_records: NotRequired[int]  # held out (--eval-fraction) or in --eval-data
    shape: str  # the records' shape (messages, prompt-completion, paired, ...)
    trainable_parameters: int
    total_parameters: int
    trainable_share: float
    steps: int  # optimizer steps
    resumed_from_step: int  # the checkpoint the last invocation started from (0: none)
    train_seconds: float
    # chat data: whose chat template rendered it (model, file, default-chatml, default-plain; chat_masks.Template)
    chat_template: NotRequired[str]
    examples: NotRequired[
        int
    ]  # sft chats: sequences trained on (a chat whose template rewrites old turns gives more)
