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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from llmforge.artifacts import Artifact, sha256_file
from llmforge.registry import POSTTRAIN_STAGES  # their raw input files are training data

EXAMPLES = 20  # item ids listed per task in the report

# A source of training text: its name, its number of texts (None: unknown), and how to read them.
Source = tuple[str, int | None, Callable[[], Iterable[str]]]


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
        if artifact.kind == "documents":
            continue
        for _, parent in artifact.parents():
            if parent is not None and parent.kind == "documents":
                chosen.setdefault(parent.fingerprint, parent)
    return list(chosen.values())


def training_files(artifacts: list[Artifact]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The raw data files sft, dpo and grpo read (JSONL, JSON, Parquet): (path, files) for each one still on disk
    with the content its manifest entry fingerprinted, and 'path (why not)' for the others."""
    from llmforge.artifacts import raw_input
    from llmforge.data.records import dataset_files
    from llmforge.errors import InputError

    found, unreadable, seen = [], [], set()
    for artifact in artifacts:
        if artifact.stage not in POSTTRAIN_STAGES:
            continue
        for entry, parent in artifact.parents():
            # raw_input entries carry a file count; a base model given as a plain directory is raw too, without one
            if parent is not None or entry.get("kind") != "raw" or "files" not in entry:
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
            found.append((path, files))
    return found, unreadable


def record_text(record: Any) -> str:
    """Every string in a training record (prompt, completion, chosen, rejected, message contents), one per line."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        return "\n".join(record_text(v) for k, v in record.items() if k != "role" and v is not None)
    if isinstance(record, list | tuple):
        return "\n".join(record_text(v) for v in record)
    return ""


def _file_texts(files: list[str]) -> Iterator[str]:
    from llmforge.data.records import file_rows

    for file in files:
        for _, record in file_rows(file):
            yield record_text(record)


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
          keep_numbers: bool = False) -> dict[str, Any]:  # fmt: skip
    """The contamination section of a report for one model: per task, decontamination and n-gram overlap."""
    artifacts = lineage(source)
    dedups = [a for a in artifacts if a.stage == "dedup" and "decontamination" in a.extra]
    from llmforge.data.documents import count_documents, iter_texts

    documents = training_documents(artifacts)
    files, unreadable = training_files(artifacts)
    sources: list[Source] = [(str(a.path), count_documents(a), lambda a=a: iter_texts(a)) for a in documents]
    sources += [(path, None, lambda names=names: _file_texts(names)) for path, names in files]
    report: dict[str, Any] = {"lineage": bool(artifacts), "dedup": [str(a.path) for a in dedups],
                              "training_documents": [name for name, _, _ in sources],
                              "training_data_not_checked": unreadable, "ngram": ngram, "tasks": {}}  # fmt: skip
    if not artifacts:
        return report
    items = {name: [(item_id(doc, i), item_text(task, doc)) for i, doc in enumerate(task.eval_docs)]
             for name, task in tasks.items()}  # fmt: skip
    overlapping = _overlap(items, sources, ngram, keep_numbers) if sources else {}
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


def _overlap(items: dict[str, list[tuple[Any, str]]], sources: list[Source], ngram: int, keep_numbers: bool):
    """{task: (ids of items sharing an n-gram with a training document, items long enough to check)}."""
    import numpy as np

    from llmforge.console import progress
    from llmforge.data.blocks import ngram_hashes

    owners = [(name, ident) for name, task_items in items.items() for ident, _ in task_items]
    hashes, numbers = [], []
    checked = dict.fromkeys(items, 0)
    for number, (name, text) in enumerate((n, t) for n, task_items in items.items() for _, t in task_items):
        grams = np.unique(ngram_hashes(text, ngram, keep_numbers=keep_numbers))
        checked[name] += bool(len(grams))
        hashes.append(grams)
        numbers.append(np.full(len(grams), number, dtype=np.int64))
    index = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    owner = np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64)
    order = np.argsort(index, kind="stable")
    index, owner = index[order], owner[order]

    hit: set[int] = set()
    if len(index):
        with progress(transient=True) as bar:
            counts = [count for _, count, _ in sources]
            total = None if None in counts else sum(counts)
            task = bar.add_task("contamination check", total=total, unit="docs")
            for _, _, texts in sources:
                for text in texts():
                    grams = np.unique(ngram_hashes(text, ngram, keep_numbers=keep_numbers))
                    left, right = (
                        np.searchsorted(index, grams, "left"),
                        np.searchsorted(index, grams, "right"),
                    )
                    for a, b in zip(left[right > left], right[right > left], strict=True):
                        hit.update(int(i) for i in owner[a:b])
                    bar.advance(task)
    found: dict[str, tuple[list, int]] = {name: ([], checked[name]) for name in items}
    for number in sorted(hit):
        name, ident = owners[number]
        found[name][0].append(ident)
    return found
