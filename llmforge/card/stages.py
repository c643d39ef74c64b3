"""The declaration of the stats each stage writes, by stage name, for the card to read them by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmforge.artifacts import Artifact
from llmforge.card.stats import Declared
from llmforge.stages import crawl_filter, dedup, dpo, grpo, pretrain, quality, quantize, reward, sft, tokenize
from llmforge.stages import eval as eval_stage

STATS = {
    crawl_filter.STAGE: crawl_filter.Stats,
    dedup.STAGE: dedup.Stats,
    quality.TRAIN_STAGE: quality.TrainStats,
    quality.FILTER_STAGE: quality.FilterStats,
    quality.ANNOTATE_STAGE: quality.AnnotateStats,
    tokenize.TRAIN_STAGE: tokenize.TrainStats,
    tokenize.ENCODE_STAGE: tokenize.EncodeStats,
    pretrain.STAGE: pretrain.Stats,
    sft.STAGE.name: sft.Stats,
    dpo.STAGE.name: dpo.Stats,
    grpo.STAGE.name: grpo.Stats,
    reward.STAGE.name: reward.Stats,
    eval_stage.STAGE: eval_stage.Stats,
    quantize.STAGE: quantize.Stats,
}


def stats_of(artifact: Artifact) -> Mapping[str, Any]:
    """The artifact's stats, read by the keys its stage declares (as written for a stage that declares none)."""
    declaration = STATS.get(artifact.stage)
    return artifact.stats if declaration is None else Declared(artifact.stats, declaration, artifact.stage)
