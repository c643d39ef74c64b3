"""Starting training processes, for pretrain and post-training alike: torchrun on one node (`--nproc N`), the
deepspeed launcher across the nodes of a hostfile (`--hostfile FILE`, one `host slots=N` line per node, started over
ssh/pdsh from the first node).

Both run `python -m llmforge.train.worker JOB` in every process and set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT, which is all the worker reads. Multi-node runs need OUT on a filesystem every node shares. A worker
that stops on llmforge's own error (a diverged run, a bad checkpoint) leaves it in failure.json beside the job file,
and `launch` raises it here, with its exit code, instead of a bare "training processes failed".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llmforge import machine
from llmforge.errors import InputError, LLMForgeError, where
from llmforge.files import write_json

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


def processes_per_node(nproc: int, hostfile: str | Path | None) -> int:
    if hostfile is None or nproc > 1:
        return nproc
    return max(slots for _, slots in read_hostfile(hostfile))


def launch_command(job: Path, nproc: int, hostfile: str | Path | None, port: int) -> list[str]:
    if hostfile is not None:
        gpus = ["--num_gpus", str(nproc)] if nproc > 1 else []
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), *gpus,
                "--master_port", str(port), "--no_local_rank", "--module", WORKER, str(job)]  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", WORKER, str(job)]  # fmt: skip


def launch(job: Path, nproc: int, hostfile: str | Path | None) -> None:
    """Run the workers to completion; their output goes to stderr (stdout carries only the artifact path)."""
    from llmforge.console import log
    from llmforge.train.deepspeed import free_port

    command = launch_command(job, nproc, hostfile, free_port())
    env = dict(os.environ)
    if not machine.has_cuda():
        env.setdefault("DS_ACCELERATOR", "cpu")
        # the node's cores shared between its processes (torchrun would give each one thread, DeepSpeed's launcher
        # all of them to every process)
        env.setdefault(
            "OMP_NUM_THREADS", str(max(1, machine.cpu_count() // processes_per_node(nproc, hostfile)))
        )
    log(f"launching: {' '.join(command)}")
    sys.stderr.flush()
    failure = failure_path(job)
    failure.unlink(missing_ok=True)
    result = subprocess.run(command, stdout=sys.stderr.fileno(), env=env)
    if (
        result.returncode != 0 and failure.is_file()
    ):  # the workers' own error (a diverged run...): raised as ours
        reported = json.loads(failure.read_text())
        raise (InputError if reported["exit_code"] == InputError.exit_code else LLMForgeError)(
            reported["message"]
        )
    if result.returncode != 0:
        raise LLMForgeError(f"training processes failed (exit {result.returncode}; their log is above); "
                            "re-run the same command to resume from the last checkpoint")  # fmt: skip


def failure_path(job: Path) -> Path:
    return Path(job).with_name("failure.json")


def record_failure(job: Path, exc: LLMForgeError) -> None:
    """A worker's LLMForgeError, for `launch` to raise in the user's process (every process that fails writes it,
    atomically: the launcher may stop the others before rank 0 gets there)."""
    write_json(failure_path(job), {"message": str(exc), "exit_code": exc.exit_code})
