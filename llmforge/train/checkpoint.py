"""Resume state in OUT/checkpoints, and the one rule every training stage follows for it: a checkpoint directory
counts only once its complete.json exists, written last (atomically), so one a kill cut short mid-write is never
resumed from.

pretrain (DeepSpeed engine, saved by llmforge.train.loop):
    checkpoints/step-00000100/      DeepSpeed's files (model, optimizer and scheduler states, ZeRO shards)
    checkpoints/step-00000100/rng-rank0.pt      each process's RNG states
    checkpoints/step-00000100/complete.json     step, data position, recent losses, world size, ZeRO stage
    checkpoints/skipped.json        batches skipped after a loss spike, so a resumed run skips them too
    checkpoints/plan.json           the run's settings, read by every worker process
    checkpoints/result.json         what the finished (or stopped) run reports back to `llmforge pretrain`

sft, dpo, grpo (TRL / HF Trainer, saved by llmforge.train.trl_job):
    checkpoints/checkpoint-100/     the Trainer's files (weights or adapter, optimizer, trainer_state.json...)
    checkpoints/checkpoint-100/complete.json    {"step": 100}, written by a callback once every process saved
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from llmforge import machine
from llmforge.files import write_json

COMPLETE = "complete.json"
SKIPPED = "skipped.json"
PREFIX = "step-"  # pretrain's checkpoint directories
TRAINER_PREFIX = "checkpoint-"  # HF Trainer's (post-training)


def tag(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def checkpoint_dirs(directory: Path, prefix: str = PREFIX) -> list[tuple[int, Path]]:
    """(step, path) of every `<prefix><step>` directory, complete or not, by step."""
    found = []
    for path in Path(directory).glob(f"{prefix}*") if Path(directory).is_dir() else []:
        step = path.name.removeprefix(prefix)
        if step.isdigit() and path.is_dir():
            found.append((int(step), path))
    return sorted(found)


def mark_complete(checkpoint: Path, info: dict[str, Any]) -> None:
    """Written last, once every process has saved its part: from now on the checkpoint counts."""
    write_json(Path(checkpoint) / COMPLETE, info)


def complete_checkpoints(directory: Path, prefix: str = PREFIX) -> list[tuple[Path, dict[str, Any]]]:
    """Finished checkpoints, oldest first, with their complete.json."""
    return [(path, json.loads((path / COMPLETE).read_text())) for _, path in checkpoint_dirs(directory, prefix)
            if (path / COMPLETE).is_file()]  # fmt: skip


def latest(directory: Path, prefix: str = PREFIX) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint and its complete.json, or None."""
    found = complete_checkpoints(directory, prefix)
    return found[-1] if found else None


def discard_unfinished(directory: Path, prefix: str = PREFIX) -> None:
    """Remove checkpoints a kill interrupted mid-write (user process, before any worker starts)."""
    from llmforge.console import log

    for _, path in checkpoint_dirs(directory, prefix):
        if not (path / COMPLETE).is_file():
            log(f"discarding {path.name}: the run was interrupted while writing it")
            shutil.rmtree(path, ignore_errors=True)


def prune(directory: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; drop older ones and unfinished leftovers older than them."""
    complete = [path for path, _ in complete_checkpoints(directory)]
    kept = set(complete[-keep:])
    newest = complete[-1].name if complete else ""
    for _, path in checkpoint_dirs(directory):
        if path not in kept and path.name <= newest:
            shutil.rmtree(path, ignore_errors=True)


def load_skipped(directory: Path) -> set[int]:
    path = Path(directory) / SKIPPED
    return set(json.loads(path.read_text())["batches"]) if path.is_file() else set()


def save_skipped(directory: Path, batches: set[int]) -> None:
    write_json(Path(directory) / SKIPPED, {"batches": sorted(batches)})


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if machine.has_cuda():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and machine.has_cuda():
        torch.cuda.set_rng_state(state["cuda"])
