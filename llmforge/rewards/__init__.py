"""Verifiable rewards for GRPO, combinable with weights: `--reward math:1.0 --reward format:0.2`.

Every reward is a TRL reward function: `f(prompts, completions, **columns) -> list[float]`, one score per
completion, where `columns` are the dataset's other fields (`answer`, `tests`, `schema`...) repeated per completion.
A user reward is named `package.module:function` or `path/to/file.py:function`; a reward model (made by
`llmforge reward`) by its directory, `runs/rm` or `runs/rm:0.5` (llmforge.rewards.model).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmforge.console import warn
from llmforge.errors import InputError

# name -> (module, function, dataset columns it reads)
BUILTIN: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "math": ("llmforge.rewards.math_answer", "math_reward", ("answer",)),
    "exact": ("llmforge.rewards.text", "exact_reward", ("answer",)),
    "format": ("llmforge.rewards.text", "format_reward", ()),
    "json": ("llmforge.rewards.text", "json_reward", ()),
    "code": ("llmforge.rewards.sandbox", "code_reward", ("tests",)),
}
_WEIGHT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class RewardSpec:
    name: str  # a built-in name, module:function, file.py:function or a reward model's directory
    weight: float = 1.0

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN

    @property
    def model(self) -> bool:
        """A reward model, named by its directory."""
        return not self.builtin and ":" not in self.name

    @property
    def label(self) -> str:
        """The name TRL logs it under (rewards/<label>/mean): a reward model's is its directory's name."""
        if self.model:
            return Path(self.name).name
        return self.name if self.builtin else self.name.rsplit(":", 1)[-1]


def parse_spec(text: str) -> RewardSpec:
    """`math`, `math:0.5`, `pkg.mod:fn`, `pkg.mod:fn:0.5`, `rewards.py:fn:2` -> name and weight."""
    head, sep, tail = text.strip().rpartition(":")
    if sep and _WEIGHT.match(tail):
        name, weight = head, float(tail)
    else:
        name, weight = text.strip(), 1.0
    if not name:
        raise InputError(f"--reward {text!r}: no reward named (built-in: {', '.join(BUILTIN)})")
    if name not in BUILTIN and ":" not in name and not Path(name).is_dir():
        raise InputError(f"--reward {text!r}: unknown reward {name!r}; built-in rewards are {', '.join(BUILTIN)}, "
                         "or give your own as module:function or path/to/file.py:function, or a reward model "
                         "as its directory")  # fmt: skip
    return RewardSpec(name=name, weight=weight)


def required_columns(spec: RewardSpec) -> tuple[str, ...]:
    return BUILTIN[spec.name][2] if spec.builtin else ()


def load_reward(spec: RewardSpec, **options) -> Callable:
    """The reward function for `spec`; `options` are keyword arguments for the built-in that accepts them.

    A call that raises, or returns other than one score per completion, scores every completion of the batch 0
    instead of stopping the run; the number of such completions goes to TRL's log as
    `rewards/<label>/failures` (through the `log_metric` TRL passes), and the first failure is shown on screen.
    """
    if spec.model:
        from llmforge.rewards.model import RewardModel

        function = RewardModel(spec.name)
    elif spec.builtin:
        module_name, function_name, _ = BUILTIN[spec.name]
        function = getattr(importlib.import_module(module_name), function_name)
        if options:
            function = functools.partial(function, **options)
        if spec.name == "code":
            from llmforge.rewards.sandbox import isolation

            isolation()  # find and say which isolation is in force now, before any training
    else:
        function = _user_function(spec.name)
    warned = False

    def reward(*args, completions=(), **kwargs):
        nonlocal warned
        try:
            scores = function(*args, completions=completions, **kwargs)
            if len(scores) != len(completions):
                raise ValueError(f"{len(scores)} scores for {len(completions)} completions")
            failures = 0
        except Exception as exc:  # noqa: BLE001 - any reward's failure is counted, not fatal
            scores, failures = [0.0] * len(completions), len(completions)
            if not warned:
                warned = True
                warn(f"reward {spec.label} failed ({type(exc).__name__}: {exc}); its {len(completions)} "
                     f"completions score 0, and failures are counted in rewards/{spec.label}/failures")  # fmt: skip
        if callable(kwargs.get("log_metric")):
            kwargs["log_metric"](f"rewards/{spec.label}/failures", failures)
        return scores

    reward.__name__ = spec.label  # TRL logs rewards/<__name__>/mean and /std
    return reward


def _user_function(name: str) -> Callable:
    location, _, function_name = name.rpartition(":")
    if location.endswith(".py") or "/" in location:
        path = Path(location)
        if not path.is_file():
            raise InputError(f"--reward {name}: no such file {path}")
        module_name = f"llmforge_user_reward_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise InputError(
                    f"--reward {name}: {path} fails to import ({type(exc).__name__}: {exc})"
                ) from None
            sys.modules[module_name] = module
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise InputError(f"--reward {name}: cannot import {location} ({exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InputError(f"--reward {name}: {location} has no function {function_name!r}")
    return function
