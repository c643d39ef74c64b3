"""Reading eval reports and printing them: one model's scores, or several side by side with deltas.

An eval-report artifact holds lm-eval's results dict in OUT/results.json when it evaluated one model (the usual
case), or {"models": [results dict, ...]} when it evaluated several at once; each results dict carries an "llmforge"
section (model, backend, chat template, contamination). `model_results` reads both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from llmforge.errors import InputError

RESULTS = "results.json"
ARROWS = {True: "↑", False: "↓"}


@dataclass
class ModelResults:
    """One evaluated model: a column of a comparison."""

    label: str
    results: dict[str, Any]  # lm-eval's results dict (+ the "llmforge" section)

    @property
    def meta(self) -> dict[str, Any]:
        return self.results.get("llmforge", {})


@dataclass
class Score:
    task: str
    metric: str
    filter: str
    value: Any
    stderr: Any
    n_shot: Any
    version: Any
    higher_is_better: bool | None


def model_results(report: str | Path) -> list[ModelResults]:
    """The models of an eval-report artifact, in the order they were evaluated."""
    from llmforge.artifacts import open_artifact

    artifact = open_artifact(report, "eval --compare", ["eval-report"])
    path = artifact.path / RESULTS
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable results ({exc})") from None
    dicts = data["models"] if "models" in data else [data]
    return [ModelResults(label=d.get("llmforge", {}).get("model", str(report)), results=d) for d in dicts]


def scores(results: dict[str, Any]) -> list[Score]:
    """Every metric of every task and group, in lm-eval's order (stderr attached to its metric)."""
    rows = []
    sections = [results.get("results", {}), {k: v for k, v in results.get("groups", {}).items()
                                             if k not in results.get("results", {})}]  # fmt: skip
    for section in sections:
        for task, metrics in section.items():
            better = results.get("higher_is_better", {}).get(task, {})
            for key, value in metrics.items():
                metric, _, filter_ = key.partition(",")
                if metric.endswith("_stderr") or key in ("alias", "name", "sample_len", "sample_count"):
                    continue
                rows.append(Score(task=task, metric=metric, filter=filter_, value=value,
                                  stderr=metrics.get(f"{metric}_stderr,{filter_}"),
                                  n_shot=results.get("n-shot", {}).get(task), version=results.get("versions", {}).get(task),
                                  higher_is_better=better.get(metric)))  # fmt: skip
    return rows


def headline(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The manifest's stats: {task: {"metric,filter": value}}, rounded for reading."""
    found: dict[str, dict[str, float]] = {}
    for score in scores(results):
        if isinstance(score.value, int | float):
            found.setdefault(score.task, {})[f"{score.metric},{score.filter}"] = round(float(score.value), 4)
    return found


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def results_table(model: ModelResults) -> Table:
    """lm-eval's own table (task, version, filter, n-shot, metric, value ± stderr) in rich."""
    meta = model.meta
    chat = {True: "on", False: "off"}.get(meta.get("chat_template"), "?")
    table = Table(title=f"{model.label}  [dim](backend {meta.get('backend', '?')}, chat template {chat})[/]",
                  title_justify="left")  # fmt: skip
    for name, justify in (("task", "left"), ("version", "right"), ("filter", "left"), ("n-shot", "right"),
                          ("metric", "left"), ("", "center"), ("value", "right"), ("± stderr", "right")):  # fmt: skip
        table.add_column(name, justify=justify)
    previous = None
    for score in scores(model.results):
        same = score.task == previous
        previous = score.task
        stderr = "" if score.stderr in (None, "N/A") else _number(score.stderr)
        table.add_row("" if same else score.task, "" if same else str(score.version), score.filter,
                      "" if same else _number(score.n_shot), score.metric,
                      ARROWS.get(score.higher_is_better, ""), _number(score.value), stderr)  # fmt: skip
    return table


@dataclass
class ComparedRow:
    task: str
    metric: str
    filter: str
    values: list[float | None]  # one per model, None where a model lacks the score
    deltas: list[float | None]  # against the first model
    higher_is_better: bool | None


def comparison(models: list[ModelResults]) -> list[ComparedRow]:
    """Rows of the side-by-side table: every (task, metric, filter) any model has, in first-seen order."""
    keyed: dict[tuple[str, str, str], list] = {}
    better: dict[tuple[str, str, str], bool | None] = {}
    for column, model in enumerate(models):
        for score in scores(model.results):
            key = (score.task, score.metric, score.filter)
            keyed.setdefault(key, [None] * len(models))[column] = (
                float(score.value) if isinstance(score.value, int | float) else None
            )
            better.setdefault(key, score.higher_is_better)
    rows = []
    for key, values in keyed.items():
        first = values[0]
        deltas = [None if first is None or v is None else v - first for v in values]
        rows.append(ComparedRow(*key, values=values, deltas=deltas, higher_is_better=better[key]))
    return rows


def column_labels(models: list[ModelResults]) -> list[str]:
    """Model labels, made unique (the same model evaluated twice, e.g. with and without chat template)."""
    labels, seen = [], {}
    for model in models:
        seen[model.label] = seen.get(model.label, 0) + 1
        labels.append(model.label if seen[model.label] == 1 else f"{model.label} #{seen[model.label]}")
    return labels


def comparison_table(models: list[ModelResults], title: str = "eval: side by side") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("task")
    table.add_column("metric")
    labels = column_labels(models)
    for number, label in enumerate(labels):
        table.add_column(label if number == 0 else f"{label} (Δ)", justify="right")
    previous = None
    for row in comparison(models):
        cells = []
        for value, delta in zip(row.values, row.deltas, strict=True):
            if value is None:
                cells.append("—")
            elif delta is None or value is row.values[0]:
                cells.append(f"{value:.4f}")
            else:
                cells.append(f"{value:.4f} ({_signed(delta, row.higher_is_better)})")
        metric = row.metric + (f" ({row.filter})" if row.filter not in ("", "none") else "")
        table.add_row("" if row.task == previous else row.task, metric, *cells)
        previous = row.task
    chat = [{True: "on", False: "off"}.get(m.meta.get("chat_template"), "?") for m in models]
    table.add_row("[dim]chat template[/]", "", *[f"[dim]{c}[/]" for c in chat], end_section=False)
    return table


def prompt_format(results: dict[str, Any]) -> str:
    """How a model's prompts were written (lm-eval's settings as the report records them)."""
    text = "plain prompts"
    if results.get("llmforge", {}).get("chat_template"):
        text = "chat template" + ("" if results.get("fewshot_as_multiturn") else " (few-shot in one turn)")
    if results.get("system_instruction"):
        text += f", system instruction {results['system_instruction']!r}"
    return text


def generation_settings(results: dict[str, Any]) -> str:
    """The gen_kwargs given over the tasks' own, as lm-eval records them."""
    given = (results.get("config") or {}).get("gen_kwargs") or {}
    return ",".join(f"{key}={value!r}" for key, value in sorted(given.items())) or "each task's own"


def comparability_warnings(models: list[ModelResults]) -> list[str]:
    """Tasks whose version, few-shot count or item count differ between the models, and prompt settings that
    differ: their scores do not compare."""
    warnings = []
    for field, what in (("versions", "version"), ("n-shot", "n-shot")):
        seen: dict[str, set[str]] = {}
        for model in models:
            for task, value in model.results.get(field, {}).items():
                seen.setdefault(task, set()).add(str(value))
        warnings += [f"{task}: {what} differs between the models ({', '.join(sorted(values))}); its scores do not "
                     "compare" for task, values in seen.items() if len(values) > 1]  # fmt: skip
    for what, setting in (("prompts", prompt_format), ("generation settings", generation_settings)):
        values = {setting(model.results) for model in models}
        if len(values) > 1:
            warnings.append(f"{what} differ between the models ({'; '.join(sorted(values))}); their scores do not "
                            "compare")  # fmt: skip
    items: dict[str, set[int]] = {}
    for model in models:
        for task, counts in model.results.get("n-samples", {}).items():
            items.setdefault(task, set()).add(counts.get("effective"))
    warnings += [f"{task}: evaluated on different numbers of items ({', '.join(map(str, sorted(counts)))})"
                 for task, counts in items.items() if len(counts) > 1]  # fmt: skip
    return warnings


def _signed(delta: float, higher_is_better: bool | None) -> str:
    text = f"{delta:+.4f}"
    if delta == 0 or higher_is_better is None:
        return text
    return f"[green]{text}[/]" if (delta > 0) == higher_is_better else f"[red]{text}[/]"


def contamination_lines(model: ModelResults) -> list[str]:
    """What the contamination check found, one line per finding (rich markup)."""
    section = model.meta.get("contamination")
    if not section:
        return []
    if not section.get("lineage"):
        return [f"[dim]{model.label}: no llmforge lineage, contamination not checked[/]"]
    lines = []
    if not section["dedup"]:
        lines.append(f"[yellow]{model.label}: no dedup artifact in its lineage; its training data was not "
                     "decontaminated by llmforge[/]")  # fmt: skip
    for entry in section.get("training_data_not_checked", []):
        lines.append(f"[yellow]{model.label}: training data not checked for overlap: {escape(entry)}[/]")
    for task, found in section["tasks"].items():
        for entry in found["decontaminated_by"]:
            lines.append(f"{task}: its data was in the decontamination set of {entry['dedup']} ({entry['items_hit']} "
                         f"of {entry['items']} items hit training documents there, which were removed)")  # fmt: skip
        if section["dedup"] and not found["decontaminated_by"]:
            lines.append(f"[yellow]{task}: its data was not in the decontamination set of "
                         f"{', '.join(section['dedup'])}[/]")  # fmt: skip
        if found["items_overlapping"]:
            ids = ", ".join(map(str, found["overlapping_ids"]))
            lines.append(f"[bold red]contamination:[/] {task}: {found['items_overlapping']} of {found['items']} items "
                         f"share a {section['ngram']}-gram with training documents ({ids})")  # fmt: skip
        unchecked = found["items"] - found["items_checked"]
        if section["training_documents"] and unchecked:
            lines.append(f"[dim]{task}: {unchecked} of {found['items']} items are shorter than "
                         f"{section['ngram']} words and were not checked for overlap[/]")  # fmt: skip
    return lines
