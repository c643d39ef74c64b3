"""Errors that end a command. The CLI turns them into one line on stderr and an exit code."""


class LLMForgeError(Exception):
    """The work failed (exit 1)."""

    exit_code = 1


class InputError(LLMForgeError):
    """Bad usage, bad input or an incompatible artifact (exit 2). Say which file, which record, what is wrong."""

    exit_code = 2


def where(path, line: int | None = None, record: str | None = None) -> str:
    """`file:line` or `file (record X)`, the prefix every bad-input message starts with."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if record is not None:
        text += f" (record {record})"
    return text
