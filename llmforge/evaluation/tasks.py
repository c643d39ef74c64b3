"""Which lm-eval tasks an eval runs, and where their data comes from.

A task entry is an lm-eval task, group or tag name (or a glob of names), a task YAML file, or a directory of task
YAMLs (every task in it). Names are looked up first in llmforge's bundled tasks (llmforge/resources/tasks) and the
user's directories, then in lm-eval's own catalog, whose index takes seconds to build, so it is only built when a
name needs it. lm-eval itself loads everything; this module finds the tasks, names what is wrong in one line, and
lists the local files behind each task (for the fingerprint and the contamination check).

The bundled tasks read JSONL through `load_jsonl_splits` (lm-eval's `custom_dataset` hook), so they work from any
directory, without the datasets cache and without a hub.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import InputError, json_lines, where

TASKS_DIR = Path(__file__).resolve().parent.parent / "resources" / "tasks"
ARITHMETIC_DATA = TASKS_DIR / "llmforge" / "arithmetic.jsonl"
BUNDLED_LOADER = "load_jsonl_splits"


# ---------------------------------------------------------------------------------------------------------------
# Hooks the bundled task YAMLs name with !function


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a broken line is an InputError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: task data file not found")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, record in json_lines(enumerate(handle, 1), path):
            if not isinstance(record, dict):
                raise InputError(f"{where(path, number)}: a task item must be a JSON object")
            records.append(record)
    return records


def load_jsonl_splits(data_files: dict[str, str | list[str]], **_metadata: Any):
    """lm-eval `custom_dataset`: {split: JSONL path(s)} -> a DatasetDict. Relative paths are taken from the
    bundled tasks directory; lm-eval also passes the task's metadata, which is not needed here."""
    from datasets import Dataset, DatasetDict

    splits = {}
    for split, files in data_files.items():
        records = [r for name in _as_list(files) for r in read_jsonl(TASKS_DIR / name)]
        splits[split] = Dataset.from_list(records)
    return DatasetDict(splits)


def score_with_rewards(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval `process_results` scoring a reply with GRPO's own rewards (llmforge.rewards): `format` (<think> then
    <answer> tags; partial credit per tag) and `math` (the answer in the tags equals the item's answer)."""
    from llmforge.rewards.math_answer import math_reward
    from llmforge.rewards.text import format_reward

    return {"format": format_reward(completions=results[:1])[0],
            "math": math_reward(completions=results[:1], answer=[doc["answer"]])[0]}  # fmt: skip


def _leaves(item) -> list:
    """The tasks of an lm-eval Group, or the Task itself."""
    return item.get_all_tasks() if hasattr(item, "get_all_tasks") else [item]


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return [v for item in value.values() for v in _as_list(item)]
    return list(value) if isinstance(value, list | tuple) else [value]


# ---------------------------------------------------------------------------------------------------------------
# Finding tasks


@functools.cache
def lm_eval_catalog():
    """lm-eval's own task index (thousands of YAML files: seconds to build, so once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=True)


def is_task_file(entry: str) -> bool:
    return entry.endswith((".yaml", ".yml"))


def is_directory_entry(entry: str) -> bool:
    """A directory is written as a path (`my_tasks/`, `./tasks`), so a task name never means a folder by accident."""
    return not is_task_file(entry) and ("/" in entry or os.sep in entry) and Path(entry).is_dir()


@dataclass
class TaskSet:
    """The tasks to evaluate: how to load each entry, and the local files they read."""

    entries: list[str | dict]  # names, YAML paths, inline configs (perplexity), in the order asked
    local: Any  # TaskManager over the bundled and the user's task directories
    standard: set[str] = field(default_factory=set)  # entries found only in lm-eval's catalog

    def manager(self, entry: str | dict):
        """The index a name is looked up in: lm-eval's catalog for standard entries and for the names inside them
        (mmlu's subgroups and tasks), which the local index (bundled and the user's tasks) does not hold."""
        if not isinstance(entry, str) or not self.standard:
            return self.local
        if entry in self.standard or (not is_task_file(entry) and entry not in self.local.task_index):
            return lm_eval_catalog()
        return self.local

    def load(self) -> list:
        """Fresh lm-eval Task/Group objects for one evaluation (tasks keep per-run state, so one set per model)."""
        top = []
        for entry in self.entries:
            loaded = self._load_entry(entry)
            children = {c for group in loaded["groups"].values() for c in group.child_names}
            top += [g for name, g in loaded["groups"].items() if name not in children]
            top += [t for name, t in loaded["tasks"].items() if name not in children]
        names = [task.task_name for item in top for task in _leaves(item)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(
                f"task {twice[0]} is asked for twice (directly and through a group, tag or directory)"
            )
        return top

    @staticmethod
    def leaf_tasks(top: list) -> dict[str, Any]:
        return {task.task_name: task for item in top for task in _leaves(item)}

    def _load_entry(self, entry: str | dict) -> dict:
        from datasets.utils import logging as datasets_logging

        name = entry if isinstance(entry, str) else entry.get("task", "inline task")
        verbosity = datasets_logging.get_verbosity()
        datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # a failure is explained below, in one line
        try:
            return self.manager(entry).load([entry])
        except InputError:
            raise
        except Exception as exc:
            raise InputError(self._why_not_loaded(name, exc)) from None
        finally:
            datasets_logging.set_verbosity(verbosity)

    def _why_not_loaded(self, name: str, exc: Exception) -> str:
        """One line for a task lm-eval could not build: a broken data line, a dataset missing offline, ..."""
        import datasets

        for config, yaml_path in self._configs(name):
            for path in local_data_files(config, yaml_path):
                if path.suffix in (".jsonl", ".json"):
                    read_jsonl(path)  # raises, naming the line, when one is broken
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        chain = [exc]
        while chain[-1].__cause__ or chain[-1].__context__:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        unreachable = (
            "ConnectionError",
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
            "DatasetNotFoundError",
        )
        if any(type(e).__name__ in unreachable for e in chain):
            found = sorted({c["dataset_path"] + (f" ({c['dataset_name']})" if c.get("dataset_name") else "")
                            for c, _ in self._configs(name) if c.get("dataset_path")})  # fmt: skip
            listed = ", ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
            many = len(found) > 1
            subject = f"its datasets {listed}" if many else f"its dataset {listed or '(unknown)'}"
            if datasets.config.HF_DATASETS_OFFLINE:
                return (f"task {name}: {subject} {'are not all' if many else 'is not'} in the local datasets cache "
                        f"({datasets.config.HF_DATASETS_CACHE}) and llmforge runs offline; run the same command as "
                        f"`llmforge --online eval ...` once to download {'them' if many else 'it'}")  # fmt: skip
            return f"task {name}: {subject} could not be downloaded ({message})"
        return f"task {name}: lm-eval cannot load it ({type(exc).__name__}: {message})"

    def _configs(self, name: str) -> list[tuple[dict, Path | None]]:
        """The YAML configs behind a task, group or tag name (or a task file), functions unresolved."""
        from lm_eval.tasks._index import Kind
        from lm_eval.tasks._yaml_loader import load_yaml

        if is_task_file(name) and Path(name).is_file():
            return [(load_yaml(name, resolve_func=False), Path(name))]
        index = self.manager(name).task_index
        entry = index.get(name)
        if entry is None:
            return []
        if entry.kind == Kind.TAG:
            members = sorted(entry.tags)
        elif entry.kind == Kind.GROUP:
            members = [t for t in _as_list((entry.cfg or {}).get("task")) if isinstance(t, str)]
        else:
            return [(entry.cfg or {}, entry.yaml_path)]
        return [found for member in members if member != name for found in self._configs(member)]

    def unsafe_tasks(self) -> list[str]:
        """Tasks that execute the code the model writes (lm-eval's `unsafe_code`: HumanEval, MBPP), read from their
        YAML configs, so they are refused before any dataset or model is loaded."""
        found = []
        for entry in self.entries:
            configs = [(entry, None)] if isinstance(entry, dict) else self._configs(entry)
            found += [str(config.get("task", entry)) for config, _ in configs if config.get("unsafe_code")]
        return list(dict.fromkeys(found))

    def task_files(self, task_name: str) -> list[Path]:
        """The local files a loaded task depends on: its YAML (and the Python beside it) and its data."""
        configs = self._configs(task_name)
        files = []
        for config, yaml_path in configs:
            if yaml_path is not None:
                files.append(Path(yaml_path).resolve())
                files += sorted(p.resolve() for p in Path(yaml_path).parent.glob("*.py"))
            files += [p.resolve() for p in local_data_files(config, yaml_path)]
        return list(dict.fromkeys(files))


def local_data_files(config: dict, yaml_path: Path | None = None) -> list[Path]:
    """Local data files a task config reads: `data_files` of a json/csv/parquet dataset, or of the bundled loader,
    or a local `dataset_path`. Hub datasets have none."""
    custom = str(config.get("custom_dataset") or "")
    kwargs = config.get("dataset_kwargs") or {}
    names = _as_list(kwargs.get("data_files"))
    if custom.endswith(BUNDLED_LOADER):
        return [TASKS_DIR / name for name in names]
    files = [Path(name) for name in names if "://" not in str(name)]
    dataset_path = config.get("dataset_path")
    if dataset_path and Path(str(dataset_path)).exists() and not custom:
        local = Path(str(dataset_path))
        files += [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    return files


def select_tasks(entries: list[str], include: list[str] | None = None,
                 inline: list[dict] | None = None) -> TaskSet:  # fmt: skip
    """Resolve task entries (names, globs, YAML files, directories) before any model is loaded."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    include = [str(Path(p)) for p in include or []]
    for directory in include:
        if not Path(directory).is_dir():
            raise InputError(f"--include {directory}: not a directory of task YAML files")
    directories = [e for e in entries if is_directory_entry(e)]
    for directory in [*include, *directories]:
        _check_directory(Path(directory))
    # a task file's folder is searched too, so its task name leads back to its files (for the fingerprint)
    folders = [str(Path(e).parent) for e in entries if is_task_file(e) and Path(e).is_file()]
    local = TaskManager(
        include_path=[str(TASKS_DIR), *include, *directories, *folders], include_defaults=False
    )

    resolved: list[str | dict] = []
    standard: set[str] = set()
    for entry in entries:
        if entry in directories:
            root = Path(entry).resolve()
            found = [name for name, e in local.task_index.items() if e.kind in (Kind.TASK, Kind.PY_TASK)
                     and e.yaml_path is not None and Path(e.yaml_path).resolve().is_relative_to(root)]  # fmt: skip
            if not found:
                raise InputError(f"{entry}: no lm-eval task YAML (with a `task:` name) in this directory")
            resolved += sorted(found)
        elif is_task_file(entry):
            if not Path(entry).is_file():
                raise InputError(f"{entry}: no such task file")
            _check_yaml(Path(entry))
            resolved.append(str(Path(entry).resolve()))
        elif entry in local.all_tasks:
            resolved.append(entry)
        elif any(c in entry for c in "*?["):
            matched = local.match_tasks([entry]) or lm_eval_catalog().match_tasks([entry])
            if not matched:
                raise InputError(f"task pattern {entry!r} matches no task")
            standard |= {m for m in matched if m not in local.all_tasks}
            resolved += matched
        elif entry in lm_eval_catalog().all_tasks:
            standard.add(entry)
            resolved.append(entry)
        else:
            known = local.all_tasks + lm_eval_catalog().all_tasks
            close = difflib.get_close_matches(entry, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            if Path(entry).is_dir():
                hint += f"; for the task directory, write it as a path: ./{entry}/"
            raise InputError(f"unknown task {entry!r} (not bundled, not in --include directories, not in lm-eval's "
                             f"{len(lm_eval_catalog().all_tasks):,} tasks){hint}")  # fmt: skip
    return TaskSet(entries=[*resolved, *(inline or [])], local=local, standard=standard)


def _check_directory(directory: Path) -> None:
    """Every YAML lm-eval would index in a task directory parses: lm-eval skips a broken one without a word, and
    its task would then be 'unknown' or missing from the directory's tasks."""
    from lm_eval.tasks._index import TaskIndex

    for path in TaskIndex._iter_yaml_files(directory):
        _parse_yaml(path)


def _parse_yaml(path: Path) -> dict:
    """A YAML task config (its includes too, functions unresolved); a broken one is named with its line."""
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        return load_yaml(path, resolve_func=False)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(
            f"{where(path, line)}: not valid YAML ({getattr(exc, 'problem', None) or exc})"
        ) from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_yaml(path: Path) -> None:
    """A task file lm-eval would skip or fail on, named with its line."""
    config = _parse_yaml(path)
    if not isinstance(config, dict) or ("task" not in config and "group" not in config):
        raise InputError(f"{path}: not an lm-eval task (no `task:` or `group:` key)")
