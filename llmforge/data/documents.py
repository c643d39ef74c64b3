"""The documents artifact: datatrove's JSONL layout, so datatrove readers and plain `zcat | jq` both work.

OUT/data/00000.jsonl.gz ...   one document per line: {"text": ..., "id": ..., "metadata": {...}}
OUT/removed/<filter>/...      samples of what each filter dropped (crawl-filter, dedup)
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from llmforge.artifacts import Artifact
from llmforge.errors import InputError, json_lines, where

DATA_DIR = "data"


def document_files(artifact: Artifact) -> list[Path]:
    """The artifact's document shards, each checked against the manifest first (present, same size), so a
    truncated or missing shard is named before any work starts instead of silently losing documents."""
    artifact.check_sizes(lambda path: path.startswith(f"{DATA_DIR}/") and ".jsonl" in path)
    return sorted((artifact.path / DATA_DIR).glob("*.jsonl*"))


@contextlib.contextmanager
def damage_named(file: Path, position: list[int]):
    """Decompression and decoding errors name the file and the last line read (`position[0]`)."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as exc:
        after = f" after line {position[0]}" if position[0] else ""
        raise InputError(f"{file}: corrupt or truncated{after} ({exc})") from None


def read_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a .jsonl or .jsonl.gz file; damage is an InputError naming the file."""
    opener = gzip.open if file.suffix == ".gz" else open
    position = [0]
    with damage_named(file, position), opener(file, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            position[0] = number
            yield number, line


def iter_documents(artifact: Artifact) -> Iterator[dict]:
    """Every document of a documents artifact, in file order."""
    for file in document_files(artifact):
        for number, record in json_lines(read_lines(file), file):
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
        position = [0]
        with damage_named(file, position), opener(file, "rb") as handle:
            for line in handle:
                position[0] += 1
                count += bool(line.strip())
    return count
