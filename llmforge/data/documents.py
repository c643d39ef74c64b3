"""The documents artifact: datatrove's JSONL layout, so datatrove readers and plain `zcat | jq` both work.

OUT/data/00000.jsonl.gz ...   one document per line: {"text": ..., "id": ..., "metadata": {...}}; one file per
                              task, continued in 00000_001.jsonl.gz ... past `shard_mb`; sorted names give the
                              documents in task order
OUT/removed/<filter>/...      samples of what each filter dropped (crawl-filter, dedup)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from llmforge.artifacts import Artifact
from llmforge.data.compression import DAMAGE, open_compressed
from llmforge.errors import InputError, json_lines, where

DATA_DIR = "data"


def shard_mb_field():
    """The data stages' bound on their output shards (datatrove's max_file_size, on the uncompressed JSON)."""
    from pydantic import Field

    return Field(
        512,
        ge=0,
        description="A task starts a new output shard (data/NNNNN_001.jsonl.gz, ...) once its current one holds this "
        "many MB of JSON, uncompressed (a third to a quarter of that on disk); 0: one shard per task",
    )


def document_files(artifact: Artifact) -> list[Path]:
    """The document shards the manifest lists, each checked against it first (present, same size, no symbolic
    link), so a truncated or missing shard is named before any work starts instead of silently losing documents,
    and a shard added to data/ after the manifest was written is never read under the artifact's fingerprint."""
    return artifact.check_sizes(lambda path: path.startswith(f"{DATA_DIR}/") and ".jsonl" in path)


@contextlib.contextmanager
def damage_named(file: Path, position: list[int]):
    """Decompression and decoding errors name the file and the last line read (`position[0]`)."""
    try:
        yield
    except (*DAMAGE, UnicodeDecodeError) as exc:
        after = f" after line {position[0]}" if position[0] else ""
        raise InputError(f"{file}: corrupt or truncated{after} ({exc})") from None


def read_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a .jsonl file (.gz or .zst: decompressed); damage is an InputError naming the file,
    and a line that is not UTF-8 is named by its number (decoded line by line: a text-mode reader decodes in blocks
    and would blame the block, lines away)."""
    position = [0]
    with damage_named(file, position), open_compressed(file) as handle:
        for number, raw in enumerate(handle, 1):
            position[0] = number
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{where(file, number)}: not valid UTF-8 (byte {exc.start + 1} of the line: "
                                 f"{exc.reason})") from None  # fmt: skip
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
        position = [0]
        with damage_named(file, position), open_compressed(file) as handle:
            for line in handle:
                position[0] += 1
                count += bool(line.strip())
    return count
