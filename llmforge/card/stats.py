"""Reading a manifest's stats by the keys their stage declares.

Every stage declares the stats it writes as a TypedDict next to the code that writes them (`dedup.Stats`,
`train.stats.TrainingSummary`, ...). The card reads stats only through `Declared`, which raises on a key the
declaration lacks, and the tests check that what the stages really write matches their declarations: a renamed key
fails a test instead of silently blanking a row of a card.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterator, Mapping
from typing import Any, NotRequired


class UndeclaredStat(Exception):
    """The card read a stats key that the stage does not declare (a bug in the card or a declaration)."""


@functools.cache
def declared_keys(declaration: type) -> dict[str, tuple[Any, bool]]:
    """A TypedDict's keys: key -> (the type of its value, whether every manifest has it)."""
    keys = {}
    for key, hint in typing.get_type_hints(declaration, include_extras=True).items():
        # With `from __future__ import annotations`, Python 3.11 files a NotRequired key as required: ask its hint.
        optional = typing.get_origin(hint) is NotRequired
        keys[key] = (typing.get_args(hint)[0] if optional else hint,
                     key in declaration.__required_keys__ and not optional)  # fmt: skip
    return keys


def _is_declaration(hint: Any) -> bool:
    """A TypedDict, or `dict[str, X]` (free keys such as source names, each value an X)."""
    return typing.is_typeddict(hint) or typing.get_origin(hint) is dict


class Declared(Mapping):
    """A stats mapping read through its declaration: reading an undeclared key raises `UndeclaredStat`, whether
    the manifest has it or not; nested mappings come back declared too."""

    def __init__(self, data: Mapping[str, Any], declaration: Any, where: str) -> None:
        self._data, self._declaration, self._where = data, declaration, where

    def __getitem__(self, key: str) -> Any:
        if typing.is_typeddict(self._declaration):
            keys = declared_keys(self._declaration)
            if key not in keys:
                raise UndeclaredStat(
                    f"{self._where}: {key!r} is not a stats key of {_name(self._declaration)}"
                )
            hint = keys[key][0]
        else:
            hint = typing.get_args(self._declaration)[1]
        value = self._data[key]
        if isinstance(value, Mapping) and _is_declaration(hint):
            return Declared(value, hint, f"{self._where}.{key}")
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def mismatches(stats: Mapping[str, Any], declaration: Any, where: str = "stats") -> list[str]:
    """How written stats differ from their declaration: keys written but not declared, and declared keys every
    manifest has that are missing; nested rows included."""
    if not typing.is_typeddict(declaration):  # dict[str, X]: any key, each value an X
        value_hint = typing.get_args(declaration)[1]
        return [
            problem
            for key, value in stats.items()
            for problem in _nested(value, value_hint, f"{where}.{key}")
        ]
    keys = declared_keys(declaration)
    name = _name(declaration)
    problems = [f"{where}.{key}: written, not declared in {name}" for key in stats if key not in keys]
    problems += [f"{where}.{key}: declared in {name}, not written" for key, (_, always) in keys.items()
                 if always and key not in stats]  # fmt: skip
    for key, value in stats.items():
        if key in keys:
            problems += _nested(value, keys[key][0], f"{where}.{key}")
    return problems


def _name(declaration: type) -> str:
    return f"{declaration.__module__.removeprefix('llmforge.')}.{declaration.__name__}"


def _nested(value: Any, hint: Any, where: str) -> list[str]:
    return mismatches(value, hint, where) if isinstance(value, Mapping) and _is_declaration(hint) else []
