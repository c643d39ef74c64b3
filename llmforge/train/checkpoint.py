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

Resume state is loaded with pickle (DeepSpeed's engine, the Trainer's optimizer and RNG files, our rng-rank*.pt):
loading a file that someone swapped can run their code. So complete.json also lists every other file of its
checkpoint with its sha256, and before a run resumes (in the user's process, before any worker starts) `verify`
refuses a checkpoint holding a file it does not list, missing or changed one, or a symlink. A checkpoint with no
list (hand-made or from an older llmforge) is refused too. The list guards against files changed or dropped in
after the fact; it is not a signature: whoever can rewrite complete.json can rewrite the list.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from llmforge import machine
from llmforge.errors import InputError
from llmforge.files import sha256_file, write_json

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
    """Written last, once every process has saved its part: from now on the checkpoint counts. It lists the
    checkpoint's files with their sha256 (`verify` checks them before a resume)."""
    write_json(Path(checkpoint) / COMPLETE, {**info, "files": file_hashes(Path(checkpoint))})


def _files(checkpoint: Path) -> list[str]:
    """Every file under a checkpoint but its complete.json, as relative POSIX paths (symlinks included)."""
    return sorted(path.relative_to(checkpoint).as_posix() for path in checkpoint.rglob("*")
                  if (path.is_file() or path.is_symlink()) and path != checkpoint / COMPLETE)  # fmt: skip


def file_hashes(checkpoint: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of a checkpoint (hashed in threads: hashlib lets go of the GIL, and a
    full checkpoint holds tens of GB)."""
    from concurrent.futures import ThreadPoolExecutor

    names = _files(checkpoint)
    with ThreadPoolExecutor(max_workers=max(1, min(8, machine.cpu_count()))) as pool:
        return dict(zip(names, pool.map(lambda name: sha256_file(checkpoint / name), names), strict=True))


def verify(checkpoint: Path, info: dict[str, Any]) -> None:
    """Refuse (exit 2) a checkpoint whose files are not exactly those its complete.json lists, unchanged: its
    pickled state is never loaded then. The listed names are only compared, never opened."""
    checkpoint = Path(checkpoint)
    again = "delete it to resume from an earlier one, or re-run with --force to start over"
    listed = info.get("files")
    if not isinstance(listed, dict):
        raise InputError(f"{checkpoint}: its {COMPLETE} lists no file hashes (made by hand or by an older llmforge); "
                         f"its state is loaded with pickle, so it is not resumed from unchecked: {again}")  # fmt: skip
    present = _files(checkpoint)
    if link := next((name for name in present if (checkpoint / name).is_symlink()), None):
        raise InputError(f"{checkpoint / link}: a symlink in a checkpoint; not resumed from: {again}")
    if extra := sorted(set(present) - set(listed)):
        raise InputError(f"{checkpoint / extra[0]}: a file its {COMPLETE} does not list (added after the checkpoint "
                         f"was written); not resumed from: {again}")  # fmt: skip
    if missing := sorted(set(listed) - set(present)):
        raise InputError(f"{checkpoint}: {missing[0]} is listed in its {COMPLETE} but missing; not resumed from: "
                         f"{again}")  # fmt: skip
    hashes = file_hashes(checkpoint)
    if changed := [name for name in present if hashes[name] != listed[name]]:
        raise InputError(f"{checkpoint / changed[0]}: changed since the checkpoint was written (its sha256 is not "
                         f"the one {COMPLETE} lists); not resumed from: {again}")  # fmt: skip


def verified_latest(directory: Path, prefix: str = PREFIX) -> tuple[Path, dict[str, Any]] | None:
    """`latest`, checked by `verify`: what a run about to resume calls (once, in the user's process)."""
    found = latest(directory, prefix)
    if found is not None:
        verify(*found)
    return found


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
