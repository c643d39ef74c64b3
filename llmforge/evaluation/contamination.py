"""Can a score be trusted? Read the evaluated model's lineage for two things:

- decontamination: each `llmforge dedup` artifact among the ancestors records the benchmark files it removed
  documents against (manifest extra["decontamination"], by sha256); a task whose data file is among them was
  decontaminated, and the report says how many of its items hit training documents there;
- overlap: the task items are compared with the training documents reachable through lineage (documents artifacts
  that some later stage read, and the JSONL / Parquet files sft, dpo and grpo trained on, when they are still on
  disk as they were: their content fingerprint is in the manifest), by word n-grams normalised exactly as dedup's
  decontamination does it
  (llmforge.data.blocks.ngram_hashes: datatrove's lowercase, punctuation-free, numbers-as-0 words). An item shorter
  than n words has no n-gram: it is counted as not checked, as dedup counts it.

The training side is read once per training data and n-gram settings: evaluation/ngram_index.py keeps each
source's n-grams in a cache that later evals read instead of rescanning the documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmforge.artifacts import EVAL_DATA, Artifact, sha256_file
from llmforge.evaluation.ngram_index import Source

# post-training stages: their raw input files are training data; quality kinds: no training data
from llmforge.registry import POSTTRAIN_STAGES, QUALITY_KINDS

EXAMPLES = 20  # item ids listed per task in the report


def lineage(source) -> list[Artifact]:
    """The model's artifact (adapters: and their base's) and every ancestor, each once."""
    found: dict[str, Artifact] = {}
    while source is not None:
        if source.artifact is not None:
            for artifact in [source.artifact, *source.artifact.ancestors()]:
                found.setdefault(artifact.fingerprint, artifact)
        source = source.base
    return list(found.values())


def training_documents(artifacts: list[Artifact]) -> list[Artifact]:
    """Documents artifacts a later stage read (tokenize, sft, ...): what the model was trained on. Documents that
    only fed another documents stage (crawl output before dedup) are not: dedup may have removed the hits."""
    chosen: dict[str, Artifact] = {}
    for artifact in artifacts:
        if artifact.kind == "documents" or artifact.kind in QUALITY_KINDS:  # a classifier trains on no model
            continue
        for entry, parent in artifact.parents():
            if parent is not None and parent.kind == "documents" and entry.get("role") != EVAL_DATA:
                chosen.setdefault(parent.fingerprint, parent)
    return list(chosen.values())


def documents_source(artifact: Artifact) -> Source:
    """A documents artifact as training text, identified by the sha256 of each shard (from its manifest: no
    hashing here), so that copies of one artifact share an index and a rebuilt one with other content does not."""
    from llmforge.data.documents import document_files

    recorded = {entry["path"]: entry.get("sha256") for entry in artifact.manifest.get("files", [])}
    files = document_files(artifact)  # checks each shard's size against the manifest
    identity = []
    for file in files:
        relative = file.relative_to(artifact.path).as_posix()
        identity.append([relative, recorded.get(relative) or sha256_file(file)])
    return Source(str(artifact.path), "documents", tuple(str(f) for f in files), {"documents": identity})


def training_files(artifacts: list[Artifact]) -> tuple[list[Source], list[str]]:
    """The raw data files sft, dpo and grpo read (JSONL, JSON, Parquet): a Source for each one still on disk with
    the content its manifest entry fingerprinted, and 'path (why not)' for the others."""
    from llmforge.artifacts import raw_input
    from llmforge.data.records import dataset_files
    from llmforge.errors import InputError

    found, unreadable, seen = [], [], set()
    for artifact in artifacts:
        if artifact.stage not in POSTTRAIN_STAGES:
            continue
        for entry, parent in artifact.parents():
            # raw_input entries carry a file count; a base model given as a plain directory is raw too, without one
            if (
                parent is not None
                or entry.get("kind") != "raw"
                or "files" not in entry
                or entry.get("role") == EVAL_DATA
            ):
                continue
            if entry["fingerprint"] in seen:
                continue
            seen.add(entry["fingerprint"])
            path = entry["path"]
            try:
                files = dataset_files(path)
            except InputError:
                unreadable.append(f"{path} ({artifact.stage} trained on it; it is no longer there)")
                continue
            if raw_input(path, files).fingerprint != entry["fingerprint"]:
                unreadable.append(f"{path} (changed since {artifact.stage} trained on it)")
                continue
            found.append(Source(path, "records", tuple(files), {"raw": entry["fingerprint"]}))
    return found, unreadable


def item_text(task, doc: dict) -> str:
    """An item as dedup indexes one: its prompt and its answer (the correct choice for multiple choice)."""
    text, target = task.doc_to_text(doc), task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if isinstance(text, int):  # choices are the contexts (winogrande-style)
            text = choices[text]
        elif isinstance(target, int) and 0 <= target < len(choices):
            target = choices[target]
    targets = target if isinstance(target, list) else [target]
    return "\n".join(str(part) for part in [text, *targets] if part not in (None, ""))


def item_id(doc: dict, position: int) -> Any:
    return doc.get("id", position) if isinstance(doc, dict) else position


def check(source, tasks: dict[str, Any], data_files: dict[str, list[Path]], ngram: int,
          keep_numbers: bool = False, cache: bool = True, workers: int = 0) -> dict[str, Any]:  # fmt: skip
    """The contamination section of a report for one model: per task, decontamination and n-gram overlap. The
    training n-grams come from the index cache (`cache`; built there with `workers` processes when missing)."""
    artifacts = lineage(source)
    dedups = [a for a in artifacts if a.stage == "dedup" and "decontamination" in a.extra]
    files, unreadable = training_files(artifacts)
    sources = [documents_source(a) for a in training_documents(artifacts)] + files
    report: dict[str, Any] = {"lineage": bool(artifacts), "dedup": [str(a.path) for a in dedups],
                              "training_documents": [s.name for s in sources],
                              "training_data_not_checked": unreadable, "ngram": ngram, "tasks": {}}  # fmt: skip
    if not artifacts:
        return report
    items = {name: [(item_id(doc, i), item_text(task, doc)) for i, doc in enumerate(task.eval_docs)]
             for name, task in tasks.items()}  # fmt: skip
    overlapping = _overlap(items, sources, ngram, keep_numbers, cache, workers) if sources else {}
    for name in tasks:
        hashes = {sha256_file(path) for path in data_files.get(name, []) if path.is_file()}
        decontaminated = [
            {"dedup": str(a.path), "benchmark": b["path"], "items": b["items"], "items_hit": len(b["items_hit"])}
            for a in dedups for b in a.extra["decontamination"]["benchmarks"] if b["sha256"] in hashes
        ]  # fmt: skip
        hits, checked = overlapping.get(name, ([], 0))
        report["tasks"][name] = {
            "in_decontamination_set": bool(decontaminated),
            "decontaminated_by": decontaminated,
            "items": len(items[name]),
            "items_checked": checked,
            "items_overlapping": len(hits),
            "overlapping_ids": hits[:EXAMPLES],
        }
    return report


def _overlap(items: dict[str, list[tuple[Any, str]]], sources: list[Source], ngram: int, keep_numbers: bool,
             cache: bool, workers: int) -> dict[str, tuple[list, int]]:  # fmt: skip
    """{task: (ids of items sharing an n-gram with a training text, items long enough to check)}."""
    import numpy as np

    from llmforge.data.blocks import ngram_hashes
    from llmforge.evaluation.ngram_index import contains, training_index

    owners = [(name, ident) for name, task_items in items.items() for ident, _ in task_items]
    hashes, numbers = [], []
    checked = dict.fromkeys(items, 0)
    for number, (name, text) in enumerate((n, t) for n, task_items in items.items() for _, t in task_items):
        grams = np.unique(ngram_hashes(text, ngram, keep_numbers=keep_numbers))
        checked[name] += bool(len(grams))
        hashes.append(grams)
        numbers.append(np.full(len(grams), number, dtype=np.int64))
    grams = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    owner = np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64)

    hit: set[int] = set()
    if len(grams):  # no item has an n-gram: nothing to look up, no index to build
        for source in sources:
            with training_index(source, ngram, keep_numbers, cache=cache, workers=workers) as index:
                hit.update(int(i) for i in np.unique(owner[contains(index, grams)]))
    found: dict[str, tuple[list, int]] = {name: ([], checked[name]) for name in items}
    for number in sorted(hit):
        name, ident = owners[number]
        found[name][0].append(ident)
    return found
