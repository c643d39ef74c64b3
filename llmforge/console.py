"""Everything a human reads goes to stderr through rich; stdout carries only the output artifact's path."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

# Logs piped to a file or CI keep long paths and fingerprints on one line. No emoji codes: `web:abc:0.3` is text.
console = Console(
    stderr=True,
    width=None if sys.stderr.isatty() else max(160, int(os.environ.get("COLUMNS") or 0)),
    emoji=False,
)


def log(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Warnings and errors are plain text (`llmforge[vllm]`, `docs/[2024]/` must print as written)."""
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def emit(path: Any) -> None:
    """The one line on stdout: the output artifact's path, so `$(llmforge dedup ...)` composes."""
    print(str(path), file=sys.stdout, flush=True)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout (file descriptor 1) to stderr for the duration: some libraries log to
    stdout (llm-compressor's loguru sink, DeepSpeed's logger), which would break `$(llmforge ...)`."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class RateColumn(ProgressColumn):
    """Items per second, in the unit of the task (`documents`, `tokens`, `steps`...)."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit", "it")
        if not task.speed:
            return Text(f"- {unit}/s", style="progress.data.speed")
        return Text(f"{human(task.speed)} {unit}/s", style="progress.data.speed")


def progress(transient: bool = False) -> Progress:
    """A progress display with rate and ETA. Use `with progress() as p: t = p.add_task("x", total=n, unit="docs")`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def human(value: float) -> str:
    """1234567 -> '1.23M'."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}"
    return str(int(value))


def flatten(stats: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, prefix=f"{name}.")
        else:
            yield name, value


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        text = ", ".join(format_value(v) for v in value[:8])
        return text + (", ..." if len(value) > 8 else "")
    return str(value)


def summary_table(title: str, stats: Mapping[str, Any], max_rows: int = 40) -> None:
    """Every stage ends with one: the numbers a user checks before moving on."""
    console.print(f"[bold]{escape(title)}[/]", highlight=False)
    if not stats:
        return
    table = Table(show_header=False)
    table.add_column("what", style="cyan")
    table.add_column("value", justify="right")
    rows = list(flatten(stats))
    for name, value in rows[:max_rows]:
        table.add_row(Text(name), Text(format_value(value)))
    if len(rows) > max_rows:
        table.add_row("...", f"{len(rows) - max_rows} more in artifact.json")
    console.print(table)
