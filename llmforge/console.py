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


def format_value(value: Any, max_items: int | None = None, digits: int = 4) -> str:
    """A value as llmforge writes it for people, the same in summary tables, `llmforge show` and cards: none as
    "–", booleans as yes/no, integers with thousands separators, other numbers to `digits` significant digits (3
    from a million up; whole ones as integers), lists and mappings comma-separated, the first `max_items` of them
    when given."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:.{min(digits, 3)}g}"
        return f"{int(value):,}" if value.is_integer() else f"{value:.{digits}g}"
    if isinstance(value, Mapping):
        items = [f"{key} {format_value(item)}" for key, item in value.items()]
    elif isinstance(value, list | tuple):
        items = [format_value(item) for item in value]
    else:
        return str(value)
    shown = items if max_items is None else items[:max_items]
    return ", ".join(shown) + (", ..." if len(shown) < len(items) else "") or "none"


TABLE_ITEMS = 8  # list items shown in a table cell


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
        table.add_row(Text(name), Text(format_value(value, max_items=TABLE_ITEMS)))
    if len(rows) > max_rows:
        table.add_row("...", f"{len(rows) - max_rows} more in artifact.json")
    console.print(table)
