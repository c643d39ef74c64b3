"""The evaluation section of a model card: scores of the eval reports that evaluate a model of the chain, and
what each report ran and found about contamination."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmforge.artifacts import Artifact, open_artifact
from llmforge.card.lineage import evaluated_models, find_reports
from llmforge.card.markdown import Markdown, fmt, name_of, show_path
from llmforge.card.stages import stats_of
from llmforge.errors import InputError


def evaluation(
    md: Markdown, artifact: Artifact, chain: list[Artifact], evals: list[str | Path] | None
) -> None:
    """A table of scores, one column per evaluated model of the chain (and per report when one model has several),
    then what each report ran and its contamination check."""
    by_fingerprint = {a.fingerprint: a for a in chain}
    reports = eval_reports(chain, evals)
    source = "given with --eval" if evals else "found next to the model"
    # (task, metric) -> {(model, report number): value}
    scores: dict[tuple[str, str], dict[tuple[str, int], Any]] = {}
    notes = []
    for number, report in enumerate(reports):
        evaluated = evaluated_in(report, by_fingerprint)
        for model, summary in evaluated:
            for task, metrics in summary.get("scores", {}).items():
                for metric, value in metrics.items():
                    scores.setdefault((task, metric), {})[(model.fingerprint, number)] = value
        if not evaluated:
            if evals:
                raise InputError(f"{report.path}: this eval report evaluates none of "
                                 f"{', '.join(name_of(a) for a in chain)} (fingerprints differ)")  # fmt: skip
            continue
        notes.append(report_note(report, evaluated))
    if not scores:
        md.para("No eval report " + ("names this model or its predecessors." if evals else
                "found next to the model; pass reports made by `llmforge eval` with `--eval REPORT`."))  # fmt: skip
        return
    used = {key for values in scores.values() for key in values}
    order = {a.fingerprint: n for n, a in enumerate(chain)}
    columns = sorted(used, key=lambda key: (order[key[0]], key[1]))
    repeated = {f for f, _ in columns if sum(g == f for g, _ in columns) > 1}
    header = ["task", "metric"]
    for fingerprint, number in columns:
        model = by_fingerprint[fingerprint]
        header.append(f"{model.stage} `{name_of(model)}`"
                      + (f" ({name_of(reports[number])})" if fingerprint in repeated else ""))  # fmt: skip
    rows = []
    for (task, metric), values in scores.items():
        name, _, filter_ = metric.partition(",")
        label = name if filter_ in ("", "none") else f"{name} ({filter_})"
        rows.append([task, label, *(values.get(key) for key in columns)])
    md.table(header, rows)
    md.para(f"Eval reports ({source}):")
    md.bullets(notes)


def eval_reports(chain: list[Artifact], evals: list[str | Path] | None) -> list[Artifact]:
    """The reports given with --eval, else those found next to the models of the chain."""
    if evals:
        return [open_artifact(path, "card --eval", ["eval-report"]) for path in evals]
    return find_reports(chain)


def evaluated_in(
    report: Artifact, models: Mapping[str, Artifact]
) -> list[tuple[Artifact, Mapping[str, Any]]]:
    """(model, its summary in the report) for each model of `models` (by fingerprint) that the report evaluates."""
    stats, found = stats_of(report), []
    for entry in evaluated_models(report.manifest.get("inputs", [])):
        model = models.get(entry.get("fingerprint"))
        if model is not None:
            found.append((model, stats["models"].get(entry.get("label"), {}) if "models" in stats else stats))
    return found


def report_note(report: Artifact, evaluated: list[tuple[Artifact, Mapping[str, Any]]]) -> str:
    """What a report ran (models, tasks, limit, few-shot, backend, chat template) and its contamination check."""
    c, summary = report.config, evaluated[0][1]
    note = (f"`{show_path(report.path)}`: {', '.join(f'`{name_of(m)}`' for m, _ in evaluated)} on "
            f"{fmt(c.get('tasks') or [])}" + (f" + perplexity on {fmt(c['perplexity'])}" if c.get("perplexity") else "")
            + f"; limit {fmt(c['limit']) if c.get('limit') else 'none'}, few-shot "
            + (fmt(c["num_fewshot"]) if c.get("num_fewshot") is not None else "task default")
            + f", backend {summary.get('backend', '?')}, chat template "
            + {True: "on", False: "off"}.get(summary.get("chat_template"), "?"))  # fmt: skip
    checks = {name_of(model): contamination_text(s.get("contamination", {})) for model, s in evaluated}
    distinct = {text for text in checks.values() if text}
    if len(distinct) == 1:
        note += f". Contamination check: {distinct.pop()}"
    elif distinct:
        note += ". Contamination check: " + " / ".join(f"{m}: {t}" for m, t in checks.items() if t)
    return note


def contamination_text(checks_by_task: Mapping[str, Mapping[str, Any]]) -> str:
    """What eval's contamination check found, per task, in words."""
    parts = []
    for task, checks in checks_by_task.items():
        found = []
        if "in_decontamination_set" in checks:
            found.append("among dedup's decontamination benchmarks" if checks["in_decontamination_set"]
                         else "not among dedup's decontamination benchmarks")  # fmt: skip
        if "items_overlapping" in checks:
            found.append(f"{fmt(checks['items_overlapping'])} item(s) overlap the training documents")
        if found:
            parts.append(f"{task}: {'; '.join(found)}")
    return " | ".join(parts)
