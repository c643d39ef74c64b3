"""Data mixtures: named, weighted inputs (`web=docs/web:0.7`) and the documents each one contributes.

A weight is a share of the mix, not a multiplier: with web 0.7 and wiki 0.3, 30% of the tokens come from wiki
whatever its size. A source whose share asks for more than it holds is repeated (upsampled), whole passes first,
then a random subset of documents for the fraction left; a large source with a small share is subsampled.
With no weights at all, every source keeps its natural share.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmforge.errors import InputError

SYNTAX = "[NAME=]DIR[:WEIGHT], e.g. web=docs/web:0.7"
NAME = re.compile(r"^[A-Za-z_][\w.-]*$")


@dataclass
class SourceSpec:
    """One input of a mixture as written on the command line."""

    name: str
    path: Path
    weight: float | None


def parse_weight(raw: str, spec: str) -> float:
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
        raise InputError(f"{spec}: weight {raw!r} is not a positive number; write {SYNTAX}")
    return weight


def parse_source(spec: str) -> SourceSpec:
    """`web=docs/web:0.7` -> (web, docs/web, 0.7). A spec that is an existing path is taken as a plain path."""
    text, name, weight = str(spec), None, None
    if not Path(text).exists():
        head, equals, rest = text.partition("=")
        if equals and NAME.match(head):
            name, text = head, rest
        if not Path(text).exists() and ":" in text:
            text, _, raw = text.rpartition(":")
            weight = parse_weight(raw, spec)
    if not text:
        raise InputError(f"{spec}: no directory given; write {SYNTAX}")
    path = Path(text)
    return SourceSpec(name=name or path.resolve().name, path=path, weight=weight)


def resolve_weights(specs: list[SourceSpec], configured: dict[str, float]) -> dict[str, float]:
    """The weights of a mixture, by source name: from the specs when they carry any, else from the config.

    Returns {} for a natural mixture (no weights anywhere).
    """
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"two inputs are named {duplicates[0]!r}; name each one: {SYNTAX}")
    given = {s.name: s.weight for s in specs if s.weight is not None}
    if given and len(given) != len(specs):
        missing = ", ".join(s.name for s in specs if s.weight is None)
        raise InputError(f"give every input a weight or none ({missing} has none); write {SYNTAX}")
    weights = given or dict(configured)
    if weights and set(weights) != set(names):
        raise InputError(
            f"the weights name {', '.join(sorted(weights))} but the inputs are named {', '.join(names)}; "
            f"name the inputs with {SYNTAX}"
        )
    return weights


def budgets(natural: dict[str, float], weights: dict[str, float], total: float | None) -> dict[str, float]:
    """What each source contributes, in the unit of `natural` (bytes, tokens): `total` split by the weights.

    `total` defaults to the natural total; with no weights the natural proportions are kept.
    """
    natural_total = sum(natural.values())
    total = natural_total if total is None else total
    if not weights:
        return {name: size * total / natural_total for name, size in natural.items()}
    weight_total = sum(weights.values())
    return {name: total * weights[name] / weight_total for name in natural}


def draw(sizes: np.ndarray, budget: float, rng: np.random.Generator) -> np.ndarray:
    """How often each document is used so that their sizes add up to `budget` (to the nearest document):
    whole passes over the source, then a random subset for the fraction of a pass left."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if total == 0 or budget <= 0:
        return np.zeros(len(sizes), dtype=np.int64)
    passes = int(budget // total)
    counts = np.full(len(sizes), passes, dtype=np.int64)
    remainder = budget - passes * total
    order = rng.permutation(len(sizes))
    cumulative = np.cumsum(sizes[order])
    take = int(np.searchsorted(cumulative, remainder))  # first prefix reaching the remainder
    if take < len(sizes):
        below = cumulative[take - 1] if take else 0
        if cumulative[take] - remainder < remainder - below:
            take += 1
    counts[order[:take]] += 1
    return counts


def hold_out(
    sizes: np.ndarray, fraction: float, rng: np.random.Generator, max_size: float | None = None
) -> np.ndarray:
    """A random held-out set (boolean mask): `fraction` of the documents, at least one when there are two or more,
    never all of them, and no more than `max_size` in total size (but at least one document)."""
    count = len(sizes)
    if fraction <= 0 or count < 2:
        return np.zeros(count, dtype=bool)
    keep = min(max(round(count * fraction), 1), count - 1)
    order = rng.permutation(count)[:keep]
    if max_size is not None:
        within = np.cumsum(np.asarray(sizes, dtype=np.int64)[order]) <= max_size
        order = order[: max(int(within.sum()), 1)]
    mask = np.zeros(count, dtype=bool)
    mask[order] = True
    return mask
