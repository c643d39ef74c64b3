"""The documents artifact: datatrove's JSONL layout, so datatrove readers and plain `zcat | jq` both work.

OUT/data/00000.jsonl.gz ...   one document per line: {"text": ..., "id": ..., "metadata": {...}}
OUT/removed/<filter>/...      samples of what each filter dropped (crawl-filter, dedup)
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from llmforge.artifacts import Artifact
from llmforge.errors import InputError, where

DATA_DIR = "data"


def document_files(artifact: Artifact) -> list[Path]:
    return sorted((artifact.path / DATA_DIR).glob("*.jsonl*"))


def iter_documents(artifact: Artifact) -> Iterator[dict]:
    """Every document of a documents artifact, in file order."""
    for file in document_files(artifact):
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where(file, number)}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise InputError(f"{where(file, number)}: a document needs a string 'text' field")
                yield record


def iter_texts(artifact: Artifact) -> Iterator[str]:
    for record in iter_documents(artifact):
        yield record["text"]


def count_documents(artifact: Artifact) -> int:
    """Documents in an artifact, counted by lines without parsing them (for progress totals)."""
    count = 0
    for file in document_files(artifact):
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as handle:
            count += sum(1 for line in handle if line.strip())
    return count
