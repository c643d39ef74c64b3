"""Writing a card: Markdown blocks and tables, and how paths, names and numbers appear in them (numbers through
`console.format_value`, the one formatter of summary tables, `llmforge show` and cards)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llmforge.artifacts import Artifact
from llmforge.console import format_value as fmt


class Markdown:
    """A card being written: headings shift by the level it is nested at."""

    def __init__(self) -> None:
        self.blocks: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(f"{'#' * min(level, 6)} {text}")

    def para(self, text: str) -> None:
        if text:
            self.blocks.append(text)

    def bullets(self, items: Iterable[str]) -> None:
        lines = [f"- {item}" for item in items if item]
        if lines:
            self.blocks.append("\n".join(lines))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        align = []
        for column in range(len(header)):
            values = [row[column] for row in rows if row[column] is not None]
            align.append("---:" if values and all(is_number(v) for v in values) else "---")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.blocks.append("\n".join(lines))

    def pairs(self, rows: list[tuple[str, Any]]) -> None:
        """A two-column table of settings or facts (rows whose value is None are left out)."""
        self.table(["", ""], [[name, value] for name, value in rows if value is not None])

    def text(self) -> str:
        return "\n\n".join(self.blocks) + "\n"


def _cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def percent(fraction: Any) -> str:
    """A fraction as a percentage to 3 significant digits ("?" when it is not a number)."""
    return f"{fmt(100 * fraction, digits=3)}%" if is_number(fraction) else "?"


def show_path(path: str | Path) -> str:
    """Paths under the working directory relative to it (as the user typed them), others absolute."""
    absolute = Path(path).resolve()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def name_of(artifact: Artifact) -> str:
    return Path(artifact.path).resolve().name


def lineage_table(md: Markdown, artifacts: list[Artifact]) -> None:
    """Where and when each artifact was made."""
    md.table(["artifact", "stage", "fingerprint", "finished", "device", "seconds"],
             [[f"`{show_path(a.path)}`", a.stage, f"`{a.fingerprint[:12]}`", lookup(a.manifest, "provenance.finished"),
               lookup(a.manifest, "provenance.device"), lookup(a.manifest, "provenance.seconds")] for a in artifacts])  # fmt: skip


def lookup(data: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """`data["a"]["b"]` for "a.b", or `default` where a key is missing."""
    for key in dotted.split("."):
        if not isinstance(data, Mapping) or key not in data:
            return default
        data = data[key]
    return data
