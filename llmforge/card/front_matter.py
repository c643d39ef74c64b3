"""The YAML front matter the Hugging Face Hub reads, built with huggingface_hub's card classes (ModelCardData,
EvalResult, DatasetCardData) so that the Hub's own parser accepts what the card declares.

The Hub wants ids it knows: `base_model` is the Hub id the lineage started from (recorded by `llmforge import`, or
a Hub id a stage read, cached or with --online), never a local directory name; `model-index` holds the scores that eval
reports give for this very model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmforge.artifacts import Artifact
from llmforge.card.evaluation import evaluated_in
from llmforge.card.markdown import lookup, name_of
from llmforge.card.stages import stats_of
from llmforge.registry import MODEL_KINDS, POSTTRAIN_STAGES

TRAINING_STAGES = ("pretrain", *POSTTRAIN_STAGES)
# The Hub's size buckets for datasets (number of documents), upper bounds.
SIZE_CATEGORIES = ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                   (1e7, "1M<n<10M"), (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"),
                   (1e11, "10B<n<100B"), (1e12, "100B<n<1T"))  # fmt: skip


def with_front_matter(card_data, body: str, card_class) -> str:
    """`---\\nYAML\\n---` then the Markdown body, parsed back by the card class (which checks the metadata)."""
    return str(card_class(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def source_record(chain: list[Artifact]) -> Mapping[str, Any]:
    """What `llmforge import` recorded about the external checkpoint the chain starts from (empty if none)."""
    return chain[0].extra.get("source") or {} if chain and chain[0].stage == "import" else {}


def hub_base(chain: list[Artifact], start: Mapping[str, Any] | None) -> str | None:
    """The Hub id the chain started from: the import's source, or a Hub id a stage read directly."""
    if start is not None:
        return start["path"] if start.get("kind") == "hub" else start.get("hub_id")
    return source_record(chain).get("hub_id")


def relation(artifact: Artifact, chain: list[Artifact]) -> str | None:
    """How the model relates to its Hub base: an adapter, a finetune (trained here, quantized after or not),
    quantized (nothing trained in between); none for the imported checkpoint itself."""
    if artifact.kind == "adapter":
        return "adapter"
    if any(step.stage in TRAINING_STAGES for step in chain):
        return "finetune"
    if artifact.kind in ("quantized-model", "gguf"):
        return "quantized"
    return None


def source_license(metadata: Mapping[str, Any]) -> str | None:
    """The license a GGUF's metadata records, when it is written as a Hub license id (apache-2.0, mit, llama3.1);
    free text such as "Apache License" is left to --license."""
    value = metadata.get("license")
    return value if isinstance(value, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", value) else None


def eval_results(artifact: Artifact, reports: list[Artifact]) -> list:
    """model-index entries: every task and metric the reports scored for this very model (not its predecessors)."""
    from huggingface_hub import EvalResult

    results = []
    for report in reports:
        for _, summary in evaluated_in(report, {artifact.fingerprint: artifact}):
            for task, metrics in summary.get("scores", {}).items():
                for key, value in metrics.items():
                    if not isinstance(value, int | float) or isinstance(value, bool):
                        continue
                    metric, _, filter_ = key.partition(",")
                    shots = report.config.get("num_fewshot")
                    results.append(EvalResult(
                        task_type="text-generation", dataset_type=task, dataset_name=task, metric_type=metric,
                        metric_value=value, metric_name=metric if filter_ in ("", "none") else f"{metric} ({filter_})",
                        dataset_args={"num_fewshot": shots} if shots is not None else None))  # fmt: skip
    return results


def model_card_data(artifact: Artifact, chain: list[Artifact], start: Mapping[str, Any] | None,
                    config: Mapping[str, Any], dataset_names: list[str], license: str | None,
                    reports: list[Artifact]):  # fmt: skip
    """The model card's metadata: license, library, tags, Hub base model and relation, datasets, eval results."""
    from huggingface_hub import ModelCardData

    tags = ["llmforge"]
    if config.get("model_type"):
        tags.append(config["model_type"])
    tags += [a.stage for a in chain if a.stage not in tags]
    if any(lookup(a.config, "lora.enabled") for a in chain if a.stage in POSTTRAIN_STAGES):
        tags.append("lora")
    if artifact.kind in ("quantized-model", "gguf"):
        tags += [
            t for t in (artifact.extra.get("method"), artifact.extra.get("format")) if t and t not in tags
        ]
    metadata = source_record(chain).get("metadata") or {}
    base = hub_base(chain, start)
    results = eval_results(artifact, reports)
    languages = metadata.get("languages")
    return ModelCardData(
        license=license or source_license(metadata),
        language=languages if isinstance(languages, list) and languages else None,
        library_name={"adapter": "peft", "gguf": "gguf"}.get(artifact.kind, "transformers"),
        pipeline_tag="text-classification" if artifact.kind == "reward-model" else "text-generation",
        tags=tags,
        base_model=base,
        base_model_relation=relation(artifact, chain) if base else None,
        datasets=dataset_names or None,
        model_name=name_of(artifact) if results else None,
        eval_results=results or None,
    )


def dataset_card_data(artifact: Artifact, lineage: list[Artifact], license: str | None):
    """A data card's metadata: name, size bucket, languages kept by crawl-filter, Hub datasets read, tags."""
    from huggingface_hub import DatasetCardData

    documents = stats_of(artifact).get("documents") if artifact.kind != "tokenizer" else None
    size = next((label for bound, label in SIZE_CATEGORIES if documents < bound), "n>1T") \
        if isinstance(documents, int) else None  # fmt: skip
    languages: list[str] = []
    hub_sources: list[str] = []
    for step in lineage:
        if step.stage == "crawl-filter":
            languages += [
                lang for lang in lookup(step.config, "language.languages") or [] if lang not in languages
            ]
        for entry, parent in step.parents():
            if parent is None and entry.get("kind") == "hub" and entry["path"] not in hub_sources:
                hub_sources.append(entry["path"])
    return DatasetCardData(
        pretty_name=name_of(artifact),
        license=license,
        language=languages or None,
        size_categories=size,
        source_datasets=hub_sources or None,
        task_categories=["text-generation"],
        tags=list(
            dict.fromkeys(["llmforge", artifact.kind, *(step.stage.replace(" ", "-") for step in lineage)])
        ),
    )


def dataset_names(data: list[tuple[Artifact, dict[str, Any], Artifact | None]]) -> list[str]:
    """The names of the training data (artifact names, or raw files' names), each once."""
    names = []
    for _, entry, found in data:
        label = name_of(found) if found is not None else Path(str(entry["path"])).name
        if label not in names and not (found is not None and found.kind in MODEL_KINDS):
            names.append(label)
    return names
