"""Resume state in OUT/checkpoints: DeepSpeed checkpoints plus what DeepSpeed does not keep.

    checkpoints/step-00000100/      DeepSpeed's files (model, optimizer and scheduler states, ZeRO shards)
    checkpoints/step-00000100/rng-rank0.pt      each process's RNG states
    checkpoints/step-00000100/complete.json     written last: step, data position, recent losses, world size
    checkpoints/skipped.json        batches skipped after a loss spike, so a resumed run skips them too
    checkpoints/plan.json           the run's settings, read by every worker process
    checkpoints/result.json         what the finished (or stopped) run reports back to `llmforge pretrain`

A checkpoint counts only once complete.json exists, so one interrupted mid-write is never resumed from.
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
PREFIX = "step-"


def tag(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def complete_checkpoints(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Finished checkpoints, oldest first, with their complete.json."""
    found = []
    for path in sorted(Path(directory).glob(f"{PREFIX}*")):
        marker = path / COMPLETE
        if marker.is_file():
            found.append((path, json.loads(marker.read_text())))
    return found


def latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    found = complete_checkpoints(directory)
    return found[-1] if found else None


def prune(directory: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; drop older ones and unfinished leftovers older than them."""
    complete = [path for path, _ in complete_checkpoints(directory)]
    kept = set(complete[-keep:])
    newest = complete[-1].name if complete else ""
    for path in Path(directory).glob(f"{PREFIX}*"):
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
