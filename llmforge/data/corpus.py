"""The documents a data stage reads: documents artifacts and raw JSONL / Parquet / text files, with their lineage.

Artifacts are read as the JSONL shards they are; raw files are checked up front (llmforge.data.sources) and read by
datatrove's readers. A stage hands `groups()` to datatrove pipelines, or iterates `documents()` in its own process
(to train a classifier on them, for example).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llmforge.data.sources import ReadSettings
from llmforge.errors import InputError


class Corpus:
    """Documents artifacts and raw files given on the command line, and one lineage entry per argument."""

    def __init__(self, inputs: list[str], settings: ReadSettings, stage: str,
                 allowed: tuple[str, ...] = ("jsonl", "parquet", "text")):  # fmt: skip
        from llmforge.artifacts import MANIFEST, open_artifact
        from llmforge.data.documents import document_files
        from llmforge.data.sources import resolve_raw_inputs

        self.artifact_files: list[str] = []
        self.refs = []
        raw_arguments = []
        for argument in inputs:
            if (Path(argument) / MANIFEST).is_file() or Path(str(argument) + ".partial").exists():
                artifact = open_artifact(argument, stage, ["documents"])
                self.artifact_files += [str(f) for f in document_files(artifact)]
                self.refs.append(artifact.ref())
            else:
                raw_arguments.append(argument)
        self.raw = resolve_raw_inputs(raw_arguments, settings, stage, allowed=allowed)
        self.refs += self.raw.refs
        self.settings = settings
        if not self.artifact_files and not self.raw.files:
            raise InputError(f"{', '.join(map(str, inputs))}: no documents for {stage}")

    def groups(self) -> list[tuple[str, list[str], ReadSettings]]:
        """(format, paths, how to read them): each group becomes one datatrove reader."""
        from llmforge.data.sources import reader_groups

        groups = [("jsonl", self.artifact_files, ReadSettings())] if self.artifact_files else []
        return groups + [(fmt, paths, self.settings) for fmt, paths in reader_groups(self.raw.files)]

    def documents(self) -> Iterator:
        """Every document (datatrove Documents), read in this process, in input order."""
        from llmforge.data.executors import _quiet_console_logger
        from llmforge.data.parts import plan_tasks

        _quiet_console_logger()  # datatrove readers log every file they open
        plan = plan_tasks(self.groups(), 0)  # one process: every file whole
        for group, reader in zip(plan.groups, plan.readers(), strict=True):
            for task in group.parts:
                yield from reader.run(rank=task)
