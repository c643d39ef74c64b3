"""Errors that end a command. The CLI turns them into one line on stderr and an exit code."""

from collections.abc import Iterator
from typing import Any


class LLMForgeError(Exception):
    """The work failed (exit 1)."""

    exit_code = 1


class InputError(LLMForgeError):
    """Bad usage, bad input or an incompatible artifact (exit 2). Say which file, which record, what is wrong."""

    exit_code = 2


def json_lines(lines, path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of `lines` ((number, text) pairs of a JSONL file at `path`); a
    line that does not parse stops the command, named by file and line."""
    import orjson

    for number, line in lines:
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if isinstance(line, bytes):  # read in binary: say plainly when the bytes are not text at all
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise InputError(f"{where(path, number)}: not valid UTF-8 (byte {bad.start + 1} of the line: "
                                     f"{bad.reason})") from None  # fmt: skip
            raise InputError(f"{where(path, number)}: not valid JSON ({exc})") from None
        yield number, value


def where(path, line: int | None = None, record: str | None = None) -> str:
    """`file:line` or `file (record X)`, the prefix every bad-input message starts with."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if record is not None:
        text += f" (record {record})"
    return text
