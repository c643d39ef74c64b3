"""How the data stages split their input files into datatrove tasks: one task per part, parts cut by size.

A file larger than `task_mb` is cut into parts of about that size, each read by a task of its own, so `--workers`
speeds up one big file too: an uncompressed JSONL file at line starts, a Parquet file at row groups, a WARC file
at record starts (a .warc.gz at its gzip members, one per record as crawlers write them). Compressed JSONL and
text files, single-member .warc.gz files and remote files are read whole: they cannot be entered in the middle
without reading everything before.

The plan depends only on the inputs and `task_mb`, never on the number of workers: task N always reads the same
part, so outputs (`data/NNNNN.jsonl.gz`, one per task) and dedup's per-task document positions are the same
whatever runs them. A document keeps the id it has when its file is read whole (its line, record or row number
in the file), so splitting changes no document.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from llmforge.data.sources import Format, ReadSettings

BLOCK = 1 << 20


@dataclass(frozen=True)
class Part:
    """A piece of an input file that one task reads. `stop` -1: the whole file (read by datatrove's own reader);
    otherwise [start, stop) in bytes (JSONL, WARC) or row groups (Parquet), and `first` the number of records of
    the file before it (lines, WARC records, or Parquet documents with text: the reader's `id_in_file`)."""

    path: str  # relative to the reader's data folder
    start: int = 0
    stop: int = -1
    first: int = 0

    @property
    def whole(self) -> bool:
        return self.stop < 0


@dataclass
class Group:
    """Files of one format on one filesystem, read by one datatrove reader; `parts[task]` is what each task reads."""

    format: Format
    root: str
    settings: ReadSettings
    parts: dict[int, Part] = field(default_factory=dict)


@dataclass
class TaskPlan:
    groups: list[Group]
    tasks: int
    split_files: int = 0  # files cut into more than one part

    def readers(self) -> list[Any]:
        """One datatrove reader per group, in the order of the groups given to plan_tasks."""
        from llmforge.data import part_readers

        return [part_readers.make(group) for group in self.groups]


def plan_tasks(groups: list[tuple[Format, list[str], ReadSettings]], task_mb: float) -> TaskPlan:
    """Number the parts of every file, group after group and file after file: task N reads part N."""
    from llmforge.data.sources import _root_and_relative

    task_bytes = int(task_mb * 2**20) if task_mb > 0 else 0
    planned: list[Group] = []
    task = split = 0
    for fmt, paths, settings in groups:
        root, relative = _root_and_relative(paths)
        group = Group(fmt, root, settings)
        for path, name in zip(paths, relative, strict=True):
            parts = file_parts(fmt, path, name, settings, task_bytes)
            split += len(parts) > 1
            for part in parts:
                group.parts[task] = part
                task += 1
        planned.append(group)
    return TaskPlan(planned, task, split)


def file_parts(fmt: Format, path: str, name: str, settings: ReadSettings, task_bytes: int) -> list[Part]:
    """The parts of one file: the whole file unless it is local, larger than `task_bytes` and can be entered at a
    record boundary."""
    from fsspec.utils import infer_compression

    compression = infer_compression(path)  # datatrove's readers decompress by the name
    enterable = (
        compression is None and fmt in ("jsonl", "parquet") or compression in (None, "gzip") and fmt == "warc"
    )
    if not task_bytes or "://" in path or not enterable:
        return [Part(name)]
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    if size <= task_bytes:
        return [Part(name)]
    count = math.ceil(size / task_bytes)
    targets = [size * k // count for k in range(1, count)]
    planner = {"jsonl": _jsonl_cuts, "warc": _warc_cuts, "parquet": _parquet_cuts}[fmt]
    cuts, end = planner(path, targets, settings)  # [(position, records before it)], end position
    if not cuts:
        return [Part(name)]
    bounds = [(0, 0), *cuts]
    stops = [position for position, _ in cuts] + [end]
    return [Part(name, start, stop, first) for (start, first), stop in zip(bounds, stops, strict=True)]


def _jsonl_cuts(path: str, targets: list[int], settings: ReadSettings) -> tuple[list[tuple[int, int]], int]:
    """The first line start at or after each target, with the number of lines before it (one pass, counting)."""
    cuts: list[tuple[int, int]] = []
    offset = lines = 0
    pending, size = list(targets), os.path.getsize(path)
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            while pending:
                # a line starts at `target` when the byte before it is a newline
                low = max(pending[0] - 1 - offset, 0)
                if low >= len(block):
                    break
                newline = block.find(b"\n", low)
                if newline < 0:
                    break
                position = offset + newline + 1
                before = lines + block.count(b"\n", 0, newline + 1)
                if (not cuts or position > cuts[-1][0]) and position < size:
                    cuts.append((position, before))
                pending = [t for t in pending if t > position]  # a line longer than a part swallows targets
            lines += block.count(b"\n")
            offset += len(block)
    return cuts, offset


def _warc_cuts(path: str, targets: list[int], settings: ReadSettings) -> tuple[list[tuple[int, int]], int]:
    """The first record start at or after each target (record offsets from warcio, which refuses a .warc.gz that
    is one gzip stream: such a file is read whole)."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    cuts: list[tuple[int, int]] = []
    pending = list(targets)
    with open(path, "rb") as handle:
        iterator = ArchiveIterator(handle, no_record_parse=True)
        try:
            for number, _ in enumerate(iterator):
                position = iterator.get_record_offset()
                if pending and position >= pending[0]:
                    cuts.append((position, number))
                    pending = [t for t in pending if t > position]
        except ArchiveLoadFailed:  # not one gzip member per record
            return [], 0
    return cuts, os.path.getsize(path)


def _parquet_cuts(path: str, targets: list[int], settings: ReadSettings) -> tuple[list[tuple[int, int]], int]:
    """The first row group starting at or after each target (positions: compressed bytes of the row groups
    before), with the documents before it: datatrove's Parquet reader numbers only rows with text."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    metadata = parquet.metadata
    cuts: list[tuple[int, int]] = []
    pending = [t * _parquet_bytes(metadata, range(metadata.num_row_groups)) // os.path.getsize(path)
               for t in targets]  # fmt: skip
    position = documents = 0
    for number in range(metadata.num_row_groups):
        if number and pending and position >= pending[0]:
            cuts.append((number, documents))
            pending = [t for t in pending if t > position]
        if pending:  # documents are counted only as far as a cut needs them
            column = parquet.read_row_group(number, columns=[settings.text_field]).column(0)
            documents += int(pc.sum(pc.greater(pc.fill_null(pc.utf8_length(column), 0), 0)).as_py() or 0)
        position += _parquet_bytes(metadata, [number])
    return cuts, metadata.num_row_groups


def _parquet_bytes(metadata, groups) -> int:
    return sum(metadata.row_group(g).column(c).total_compressed_size
               for g in groups for c in range(metadata.num_columns))  # fmt: skip


def split_note(plan: TaskPlan) -> str:
    """For the stage's opening line: how many files were cut into several tasks."""
    return f" ({plan.split_files} large file(s) split by input.task_mb)" if plan.split_files else ""
