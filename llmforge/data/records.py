"""Training records read from user datasets and checked before any compute: what sft, dpo and grpo train on and
what eval's contamination check reads back.

A dataset is a JSONL / JSON (each also .gz or .zst) / Parquet file (or a folder or glob of them) or a documents
artifact. `read_records` checks every record with the stage's validator and stops at the first bad one with
`file:line: what is wrong` (exit 2); the `check_*` functions are the pieces validators are built from (chats,
prompts, answers, text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.artifacts import MANIFEST, Artifact, InputRef, expand_paths, open_artifact, raw_input
from llmforge.errors import InputError, json_lines, where

DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".parquet")
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Records:
    """Validated, normalised records of one dataset."""

    items: list[dict[str, Any]]
    shape: str
    locations: list[str]  # file:line of each record, for errors found later (chat template masks)


# record -> (its shape, the normalised record); raises ValueError saying what is wrong
Validator = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


def held_out(records: Records, fraction: float, seed: int) -> tuple[Records, Records]:
    """`records` split into those trained on and a held-out share (at least one), chosen by `seed`; both keep the
    records' order."""
    import random

    count = max(1, round(fraction * len(records.items)))
    if count >= len(records.items):
        raise InputError(f"--eval-fraction {fraction:g} holds out {count} of {len(records.items)} records, leaving "
                         "none to train on")  # fmt: skip
    chosen = set(random.Random(seed).sample(range(len(records.items)), count))

    def part(keep) -> Records:
        indices = [i for i in range(len(records.items)) if (i in chosen) == keep]
        return Records(
            [records.items[i] for i in indices], records.shape, [records.locations[i] for i in indices]
        )

    return part(False), part(True)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_records(path: str | Path, stage: str, validate: Validator) -> Records:
    """Read a JSONL / Parquet file (or a folder or glob of them) or a documents artifact, checking every record.

    The first bad record stops everything with `file:line: what is wrong` (exit 2). One dataset holds one shape.
    """
    path = str(path)
    if (Path(path) / MANIFEST).is_file():
        rows = _documents_rows(open_artifact(path, stage, ["documents"]))
    else:
        files = dataset_files(path)
        rows = (row for file in files for row in file_rows(file))
    items, locations, shape, first_location = [], [], None, None
    for location, record in rows:
        if not isinstance(record, dict):
            raise InputError(f"{location}: a record must be a JSON object, got {type(record).__name__}")
        try:
            record_shape, normalised = validate(record)
        except ValueError as exc:
            raise InputError(f"{location}: {exc}") from None
        if shape is None:
            shape, first_location = record_shape, location
        elif record_shape != shape:
            raise InputError(f"{location}: a {record_shape!r} record in a dataset of {shape!r} records (from "
                             f"{first_location}); one dataset holds one shape")  # fmt: skip
        items.append(normalised)
        locations.append(location)
    if not items:
        raise InputError(f"{path}: holds no records; there is nothing to {stage}")
    return Records(items=items, shape=shape, locations=locations)


def dataset_files(path: str) -> list[str]:
    files = [f for f in expand_paths([path]) if f.endswith(DATA_SUFFIXES)]
    if not files:
        raise InputError(f"{path}: no dataset files (.jsonl, .json, .parquet) and not a documents artifact")
    return files


def dataset_ref(path: str | Path, stage: str) -> InputRef:
    """The dataset's lineage entry (content fingerprint), without reading its records."""
    path = str(path)
    if (Path(path) / MANIFEST).is_file():
        return open_artifact(path, stage, ["documents"]).ref()
    return raw_input(path, dataset_files(path))


def file_rows(file: str) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a JSONL, JSON or Parquet dataset file; `where` names file and line."""
    if file.endswith(".parquet"):
        return _parquet_rows(file)
    if file.endswith((".json", ".json.gz", ".json.zst")):
        return _json_rows(file)
    return _jsonl_lines(file)


def _jsonl_lines(file: str) -> Iterator[tuple[str, Any]]:
    from llmforge.data.documents import read_lines

    # a damaged .gz is named with the last line read
    for number, record in json_lines(read_lines(Path(file)), file):
        yield where(file, number), record


def _json_rows(file: str) -> Iterator[tuple[str, Any]]:
    """A .json file: JSON lines, or one JSON array of records."""
    from llmforge.data.compression import open_compressed
    from llmforge.data.documents import damage_named

    with damage_named(Path(file), [0]), open_compressed(file, "rt") as handle:
        head = handle.read(1024).lstrip()
    if not head.startswith("["):
        yield from _jsonl_lines(file)
        return
    with damage_named(Path(file), [0]), open_compressed(file, "rt") as handle:
        try:
            records = json.load(handle)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where(file, exc.lineno)}: not valid JSON ({exc.msg})") from None
    for number, record in enumerate(records, 1):
        yield where(file, record=str(number)), record


def _parquet_rows(file: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as exc:
        raise InputError(f"{file}: not a readable Parquet file ({exc})") from None
    for number, row in enumerate(table.to_pylist(), 1):
        yield where(file, record=str(number)), row


def _documents_rows(artifact: Artifact) -> Iterator[tuple[str, Any]]:
    from llmforge.data.documents import document_files

    for file in document_files(artifact):
        for location, document in _jsonl_lines(str(file)):
            # a document's metadata can carry the other fields (prompt, answer...)
            if isinstance(document, dict):
                document = {**(document.get("metadata") or {}), "text": document.get("text")}
            yield location, document


# ---------------------------------------------------------------------------------------------------------------
# Checks validators are built from (each raises ValueError with what is wrong)


def check_messages(messages: Any, field_name: str = "messages", need_assistant: bool = True) -> list[dict]:
    """A chat: a non-empty list of {role, content} turns; assistant turns may carry tool_calls instead."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{field_name}' must be a non-empty list of {{role, content}} messages")
    cleaned = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{field_name}[{index}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{field_name}[{index}].role is {role!r}; expected one of {', '.join(ROLES)}")
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        if role == "assistant" and tool_calls is not None:
            if not isinstance(tool_calls, list) or not all(
                isinstance(c, dict) and isinstance((c.get("function") or c).get("name"), str)
                for c in tool_calls
            ):
                raise ValueError(
                    f"{field_name}[{index}].tool_calls must be a list of {{name, arguments}} calls"
                )
            if content is not None and not isinstance(content, str):
                raise ValueError(f"{field_name}[{index}].content must be a string")
        elif not isinstance(content, str):
            raise ValueError(f"{field_name}[{index}] ({role}) needs a string 'content'")
        turn = {"role": role, "content": content if content is not None else ""}
        if tool_calls is not None:
            turn["tool_calls"] = tool_calls
        cleaned.append(turn)
    if need_assistant and not any(
        m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in cleaned
    ):
        raise ValueError(f"'{field_name}' has no assistant turn with content: nothing to train on")
    return cleaned


def check_text(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{field_name}' must be a non-empty string")
    return value


def check_prompt(value: Any, field_name: str = "prompt") -> str | list[dict]:
    """A prompt: a string, or chat messages that end before the assistant's answer."""
    if isinstance(value, list):
        messages = check_messages(value, field_name, need_assistant=False)
        if messages[-1]["role"] == "assistant":
            raise ValueError(
                f"'{field_name}' ends with an assistant turn; the answer belongs in the completion"
            )
        return messages
    return check_text(value, field_name)


def check_answer(value: Any, field_name: str, conversational: bool) -> str | list[dict]:
    """A completion (or chosen/rejected answer): matches the prompt's form, string or assistant messages."""
    if conversational:
        if isinstance(value, str):  # a plain answer to a chat prompt is the assistant's turn
            value = [{"role": "assistant", "content": value}]
        messages = check_messages(value, field_name, need_assistant=False)
        if any(m["role"] != "assistant" for m in messages):
            raise ValueError(f"'{field_name}' may only hold assistant turns (the prompt holds the rest)")
        return check_messages(messages, field_name)
    if isinstance(value, list):
        raise ValueError(
            f"'{field_name}' is a message list but the prompt is a string; use one form for both"
        )
    return check_text(value, field_name)
