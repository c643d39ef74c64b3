"""Starting training processes: torchrun on one node (`--nproc N`), the deepspeed launcher across the nodes of a
hostfile (`--hostfile FILE`, one `host slots=N` line per node, started over ssh/pdsh from the first node).

Both set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process, which is all the worker
(llmforge/train/worker.py) reads. Multi-node runs need OUT on a filesystem every node shares.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llmforge.errors import InputError, LLMForgeError, where

WORKER = "llmforge.train.worker"


def read_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """[(host, slots)] from a DeepSpeed/MPI-style hostfile."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the hostfile ({exc.strerror or exc})") from None
    hosts = []
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = [p for p in parts[1:] if p.startswith("slots=")]
        if len(parts) != 2 or not slots or not slots[0].removeprefix("slots=").isdigit():
            raise InputError(f"{where(path, number)}: expected 'HOST slots=N', got {line!r}")
        hosts.append((parts[0], int(slots[0].removeprefix("slots="))))
    if not hosts:
        raise InputError(f"{path}: the hostfile names no hosts")
    return hosts


def world_size(nproc: int, hostfile: str | Path | None) -> int:
    """Processes in the job: `nproc` per node of the hostfile (all its slots when nproc is not given), or
    `nproc` on this machine."""
    if hostfile is None:
        return nproc
    hosts = read_hostfile(hostfile)
    if nproc > 1:
        return nproc * len(hosts)
    return sum(slots for _, slots in hosts)


def launch_command(plan: Path, nproc: int, hostfile: str | Path | None, port: int) -> list[str]:
    if hostfile is not None:
        gpus = ["--num_gpus", str(nproc)] if nproc > 1 else []
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), *gpus,
                "--master_port", str(port), "--no_local_rank", "--module", WORKER, str(plan)]  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", WORKER, str(plan)]  # fmt: skip


def launch(plan: Path, nproc: int, hostfile: str | Path | None) -> None:
    """Run the workers to completion; their output goes to stderr (stdout carries only the artifact path)."""
    from llmforge.console import log
    from llmforge.train.deepspeed import free_port, on_cpu

    command = launch_command(plan, nproc, hostfile, free_port())
    env = dict(os.environ)
    if on_cpu():
        env.setdefault("DS_ACCELERATOR", "cpu")
    log(f"launching: {' '.join(command)}")
    sys.stderr.flush()
    result = subprocess.run(command, stdout=sys.stderr.fileno(), env=env)
    if result.returncode != 0:
        raise LLMForgeError(f"training processes failed (exit {result.returncode}; their log is above); "
                            "re-run the same command to resume from the last checkpoint")  # fmt: skip
