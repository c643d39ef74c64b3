"""Running datatrove pipelines for a stage: the local multi-process executor, Slurm or Ray, resumable.

A stage describes its work as `Step`s (a name, a function that builds the pipeline, a task count). Pipelines are
built by functions, never at import time: datatrove's local workers start through forkserver and would re-run
module-level code. Every step logs into its own folder under the artifact's `logs/` (unhashed, kept across an
interrupted run): datatrove marks each finished task there and skips it when the same command runs again. The
folder records the fingerprint of the run that started it, so marks of another run are never taken as ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import Field

from llmforge import machine
from llmforge.config import StageConfig
from llmforge.errors import InputError, LLMForgeError


class SlurmSettings(StageConfig):
    partition: str | None = Field(
        None, description="Slurm partition to submit to (required with --executor slurm)"
    )
    time: str = Field("24:00:00", description="Time limit of each Slurm task")
    cpus_per_task: int = Field(1, ge=1, description="CPUs per Slurm task")
    mem_per_cpu_gb: float = Field(2, gt=0, description="Memory per CPU in GB")
    qos: str = Field("normal", description="Slurm QOS")
    env_command: str | None = Field(
        None,
        description="Shell command that activates the Python environment on the nodes; default: source this "
        "environment's bin/activate (a filesystem shared with the nodes is assumed)",
    )
    sbatch_args: dict[str, str] = Field(
        default_factory=dict, description="Extra #SBATCH options, e.g. {account: x}"
    )
    poll_seconds: float = Field(30, gt=0, description="How often to check the jobs' progress")


class RaySettings(StageConfig):
    address: str | None = Field(
        None,
        description="Ray cluster address (HOST:PORT of `ray start --head`); none: RAY_ADDRESS, else the cluster "
        "started on this machine, else a new Ray instance in this process (ray.init())",
    )
    cpus_per_task: int = Field(1, ge=1, description="CPUs per Ray task")
    mem_per_cpu_gb: float = Field(2, gt=0, description="Memory per CPU in GB")


class ExecutorSettings(StageConfig):
    kind: Literal["local", "slurm", "ray"] = Field(
        "local", description="local: processes on this machine; slurm / ray: the same pipeline on a cluster"
    )
    workers: int = Field(
        0, ge=0, description="Tasks running at once; 0 = one per CPU core (local) or no limit (slurm, ray)"
    )
    slurm: SlurmSettings = Field(default_factory=SlurmSettings, description="Slurm settings")
    ray: RaySettings = Field(default_factory=RaySettings, description="Ray settings")


# In each step's logging folder: the fingerprint of the run whose completion marks it holds.
RUN_MARK = "llmforge-run.json"
# In each step's logging folder on Ray: the message of a task that stopped on bad input, one file per task.
INPUT_ERRORS = "input-errors"
# In each step's logging folder: one lock file per task, held while the task runs (see task_lock).
TASK_LOCKS = "task-locks"
# datatrove's Ray executor warns once per step that a local logging folder must be shared (said once by
# _ray_connection instead), and that tasks did not complete (run_steps says which, and why).
_RAY_NOISE = ("Logging directory points to a local filesystem", "Only ")


@dataclass
class Step:
    """One datatrove pipeline of a stage, run over `tasks` tasks."""

    name: str
    build: Callable[[], list]
    tasks: int


def _quiet_console_logger() -> None:
    """datatrove logs each task at INFO on stderr; the full log stays in each step's logs/ folder.

    datatrove's logging module resets loguru to a DEBUG sink on stderr when it is first imported, which happens
    while a stage builds its pipeline (after this runs): import it first, so the reset cannot undo ours (with
    workers > 1 the executor's merged stats would otherwise be dumped on stderr)."""
    import datatrove.utils.logging  # noqa: F401
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", filter=_console_filter)


def _console_filter(record: dict) -> bool:
    return not (record["name"] == "datatrove.executor.ray" and record["message"].startswith(_RAY_NOISE))


def _no_traceback_for_input_errors(record: dict) -> None:
    """datatrove logs a failed task's exception with a long traceback; bad input (a corrupt shard) needs only
    its message, which names the file, so the traceback is dropped for InputError."""
    exception = record["exception"]
    if exception is not None and exception.type is not None and issubclass(exception.type, InputError):
        record["exception"] = None


@contextlib.contextmanager
def task_lock(logging_dir: Any, rank: int):
    """Held while task `rank` runs. The output's lock (llmforge/locks.py) goes with the llmforge process, but a
    task can outlive it: after kill -9, a local worker finishes the task it was on, and Ray takes a few seconds to
    end a dead driver's tasks. A resumed run's task waits here for such a task instead of writing the same files
    beside it, then finds it completed (datatrove skips it) or redoes it. flock: released by the kernel however
    the holder ends; across nodes on a shared filesystem that supports it (see llmforge/locks.py)."""
    import fcntl

    from loguru import logger

    path = Path(logging_dir.path) / TASK_LOCKS / f"{rank:05d}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning(f"task {rank}: waiting for the same task of an earlier run of this output to end")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without flock (some FUSE mounts): run unguarded, as before
            logger.warning(f"task {rank}: no lock on {path} ({exc.strerror or exc}); running without it")
        yield
    finally:
        os.close(fd)


class _GuardedTasks:
    """What every executor's task does around datatrove's own run (mixed in before the datatrove executor, on this
    machine or, pickled, on a cluster's nodes): bad input logged without a traceback, and the task's lock held."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        from loguru import logger

        logger.configure(patcher=_no_traceback_for_input_errors)  # in each worker process too
        with task_lock(self.logging_dir, rank):
            return super()._run_for_rank(rank, local_rank, node_rank)


def _local_executor_class():
    from datatrove.executor import LocalPipelineExecutor

    class QuietLocalExecutor(_GuardedTasks, LocalPipelineExecutor):
        """datatrove echoes the log of local rank 0 on stderr, under our progress bar; run every task as if it
        were another rank (errors still reach the console) and keep the console logger at WARNING after it."""

        def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
            try:
                return super()._run_for_rank(rank, local_rank + 1, node_rank)
            finally:
                _quiet_console_logger()

    return QuietLocalExecutor


def _ray_executor_class():
    from datatrove.executor.ray import RayPipelineExecutor

    class RayExecutor(_GuardedTasks, RayPipelineExecutor):
        """datatrove's Ray executor keeps a failed task's error in the task's log (the driver only learns that
        the task failed): a task that meets bad input also writes its one-line message to the step's
        input-errors/ folder, so the command stops with it, as it does on the local executor. Each task's log
        is its own (see below)."""

        def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
            import tempfile

            # datatrove writes a task's log to tempfile.gettempdir()/ray_logs/logs/task_<rank>.log first, then
            # copies it to the step's logs/: named by rank alone, so two runs on one node would write, and copy
            # back, each other's logs. Each task gets a temporary directory of its own for the time it runs.
            previous, scratch = tempfile.tempdir, tempfile.mkdtemp(prefix=f"llmforge-task-{rank:05d}-")
            tempfile.tempdir = scratch
            try:
                return super()._run_for_rank(rank, local_rank, node_rank)
            except InputError as exc:
                with self.logging_dir.open(f"{INPUT_ERRORS}/{rank:05d}.txt", "w") as handle:
                    handle.write(str(exc))
                raise
            finally:
                tempfile.tempdir = previous
                shutil.rmtree(scratch, ignore_errors=True)

    return RayExecutor


def _slurm_executor_class():
    from datatrove.executor import SlurmPipelineExecutor

    class SlurmExecutor(_GuardedTasks, SlurmPipelineExecutor):
        """datatrove's Slurm executor, whose tasks (datatrove unpickles the executor on the nodes) are guarded as
        on the local and Ray executors."""

    return SlurmExecutor


def check_executor(settings: ExecutorSettings) -> None:
    """What a cluster executor needs, checked before a stage creates its output (not when the work starts)."""
    import importlib.util

    if settings.kind == "slurm" and not settings.slurm.partition:
        raise InputError("--executor slurm needs a partition: --set executor.slurm.partition=NAME")
    if settings.kind == "slurm" and (missing := [c for c in ("sbatch", "squeue") if shutil.which(c) is None]):
        # sbatch submits; squeue is how llmforge sees a job end with tasks unfinished (else it would wait forever)
        raise InputError(
            f"--executor slurm needs Slurm's {' and '.join(missing)} on PATH; run on a login node"
        )
    if settings.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise InputError("--executor ray needs the ray package (pip install ray)")


def build_executors(steps: list[Step], settings: ExecutorSettings, logs: Path, job_name: str) -> list[Any]:
    """One datatrove executor per step, each logging in logs/<step>; on Slurm and Ray each depends on the one
    before (the cluster runs them in order). The settings passed check_executor."""
    executors: list[Any] = []
    for step in steps:
        common = {"pipeline": step.build(), "tasks": step.tasks, "logging_dir": str(logs / step.name)}
        if settings.kind == "local":
            workers = min(settings.workers or machine.cpu_count(), step.tasks)
            executor = _local_executor_class()(**common, workers=workers)
        elif settings.kind == "slurm":
            slurm = settings.slurm  # its partition was checked by check_executor
            activate = Path(sys.prefix) / "bin" / "activate"
            executor = _slurm_executor_class()(
                **common, time=slurm.time, partition=slurm.partition, cpus_per_task=slurm.cpus_per_task,
                mem_per_cpu_gb=slurm.mem_per_cpu_gb, workers=settings.workers or -1, qos=slurm.qos,
                job_name=f"{job_name}-{step.name}", sbatch_args=dict(slurm.sbatch_args),
                env_command=slurm.env_command or (f"source {activate}" if activate.is_file() else None),
                depends=executors[-1] if executors else None,
            )  # fmt: skip
        else:
            executor = _ray_executor_class()(
                **common, workers=settings.workers or -1, cpus_per_task=settings.ray.cpus_per_task,
                mem_per_cpu_gb=settings.ray.mem_per_cpu_gb, depends=executors[-1] if executors else None,
            )  # fmt: skip
        executors.append(executor)
    return executors


def claim_logs(steps: list[Step], logs: Path, fingerprint: str) -> None:
    """datatrove skips every task whose completion mark it finds in the step's logging folder, so only the marks
    of a run with this fingerprint may be there: each step folder records the fingerprint that started it, and a
    folder holding work of another fingerprint, or of unknown origin, stops the stage instead of being joined."""
    from llmforge.files import write_json

    for step in steps:
        folder = logs / step.name
        try:
            owner = json.loads((folder / RUN_MARK).read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner == fingerprint:
            continue
        if folder.is_dir() and any(folder.iterdir()):
            origin = f"another run (fingerprint {str(owner)[:12]})" if owner else "unknown origin"
            raise InputError(f"{folder} holds datatrove work of {origin}, which this run must not join; run again "
                             "with --force to discard the partial work")  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RUN_MARK, {"fingerprint": fingerprint})


def completed_tasks(logging_dir: Path) -> int:
    folder = Path(logging_dir) / "completions"
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def run_steps(
    steps: list[Step], settings: ExecutorSettings, logs: Path, job_name: str, fingerprint: str
) -> None:
    """Run the steps in order (resuming finished tasks of this fingerprint) with a progress bar per step; raises if
    a task failed."""
    _quiet_console_logger()
    check_executor(settings)
    claim_logs(steps, logs, fingerprint)
    with _ray_connection(settings, logs):
        _run_steps(steps, settings, logs, job_name)


def _run_steps(steps: list[Step], settings: ExecutorSettings, logs: Path, job_name: str) -> None:
    from llmforge.console import log

    executors = build_executors(steps, settings, logs, job_name)
    for step in steps:
        done = completed_tasks(logs / step.name)
        if done:
            log(f"[cyan]resuming[/] {job_name} {step.name}: {done}/{step.tasks} tasks already done, "
                "datatrove skips them")  # fmt: skip
    if settings.kind == "slurm":
        executors[-1].run()  # submits every step, chained by dependencies
        for step, executor in zip(steps, executors, strict=True):
            _wait_for_slurm(step, executor, logs / step.name, settings.slurm.poll_seconds)
            shutil.rmtree(logs / step.name / TASK_LOCKS, ignore_errors=True)
        return
    for step, executor in zip(steps, executors, strict=True):
        shutil.rmtree(logs / step.name / INPUT_ERRORS, ignore_errors=True)  # of an earlier attempt
        with TaskProgress(step, logs / step.name), _without_tqdm():
            try:
                executor.run()
            except InputError:  # a task met bad input (a corrupt shard): its own message names the file
                raise
            except Exception as exc:
                raise LLMForgeError(f"{job_name} {step.name} failed: {type(exc).__name__}: {exc}; the task logs are "
                                    f"in {logs / step.name / 'logs'}; re-run the same command to resume") from exc  # fmt: skip
        if completed_tasks(logs / step.name) < step.tasks:
            if errors := sorted((logs / step.name / INPUT_ERRORS).glob("*.txt")):
                raise InputError(errors[0].read_text())  # a task on Ray met bad input
            raise LLMForgeError(f"{job_name} {step.name}: {step.tasks - completed_tasks(logs / step.name)} tasks did "
                                f"not finish; see {logs / step.name / 'logs'}")  # fmt: skip
        # every task is done: nothing holds their locks any more
        shutil.rmtree(logs / step.name / TASK_LOCKS, ignore_errors=True)


@contextlib.contextmanager
def _ray_connection(settings: ExecutorSettings, logs: Path):
    """Connected to the Ray cluster while the steps run (unless the caller already is): the driver neither
    prints Ray's INFO lines nor streams the workers' output (datatrove's tqdm bars); each task's log is in
    logs/<step>/logs, as with the other executors."""
    if settings.kind != "ray":
        yield
        return
    import logging

    import ray

    from llmforge.console import log

    if ray.is_initialized():
        yield
        return
    address = settings.ray.address
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as exc:
        raise LLMForgeError(f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS', 'auto')}: "
                            f"{exc}; a cluster with token authentication (Ray's default) also needs RAY_AUTH_MODE=token "
                            "and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)") from exc  # fmt: skip
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        cpus = sum(node.get("CPU", 0) for node in nodes)
        log(
            f"ray: {len(nodes)} node(s), {cpus:g} CPUs; every node writes to {logs.parent}, which they must share"
        )
        _check_task_fits(settings.ray, nodes)
        yield
    finally:
        ray.shutdown()


def _check_task_fits(settings: RaySettings, nodes: list[dict]) -> None:
    """A task that no node can hold would wait for resources forever: say so instead."""
    cpus, memory = settings.cpus_per_task, settings.cpus_per_task * settings.mem_per_cpu_gb * 2**30
    if not any(node.get("CPU", 0) >= cpus and node.get("memory", 0) >= memory for node in nodes):
        largest = max(nodes, key=lambda node: (node.get("CPU", 0), node.get("memory", 0)), default={})
        raise InputError(f"no node of the Ray cluster can hold a task of {cpus} CPU(s) and {memory / 2**30:g} GB "
                         f"(the largest has {largest.get('CPU', 0):g} CPUs and {largest.get('memory', 0) / 2**30:.1f} "
                         "GB for tasks); lower --set executor.ray.cpus_per_task or executor.ray.mem_per_cpu_gb")  # fmt: skip


@contextlib.contextmanager
def _without_tqdm():
    """datatrove's steps draw tqdm bars that would tear through ours: workers start with TQDM_DISABLE set, and
    tasks run in this process get tqdm switched off until the step ends."""
    from functools import partialmethod

    from tqdm import tqdm

    os.environ["TQDM_DISABLE"] = "1"
    original = tqdm.__init__
    tqdm.__init__ = partialmethod(original, disable=True)
    try:
        yield
    finally:
        tqdm.__init__ = original
        os.environ.pop("TQDM_DISABLE", None)


class TaskProgress:
    """A progress bar of finished tasks, polled from datatrove's completion marks while the step runs."""

    def __init__(self, step: Step, logging_dir: Path, poll: float = 0.5):
        self.step, self.logging_dir, self.poll = step, logging_dir, poll
        self.stop = threading.Event()

    def __enter__(self):
        from llmforge.console import progress

        self.bar = progress()
        self.bar.__enter__()
        self.task = self.bar.add_task(self.step.name, total=self.step.tasks,
                                      completed=completed_tasks(self.logging_dir), unit="tasks")  # fmt: skip
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.stop.wait(self.poll):
            self.bar.update(self.task, completed=completed_tasks(self.logging_dir))

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.bar.update(self.task, completed=completed_tasks(self.logging_dir))
        self.bar.__exit__(*exc)


def _slurm_job_alive(job_id: Any) -> bool:
    """Whether the job is still pending or running. squeue lists an ended job as nothing for a few minutes, then
    refuses its id ("Invalid job id specified") once the controller forgets it; any other failure (the controller
    busy or restarting) says nothing, so the job counts as alive."""
    if job_id in (None, -1):
        return True
    result = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True)
    if result.returncode != 0:
        return "invalid job id" not in result.stderr.lower()
    return bool(result.stdout.strip())


def _wait_for_slurm(step: Step, executor: Any, logging_dir: Path, poll: float) -> None:
    from llmforge.console import log

    log(f"waiting for Slurm job {executor.job_id} ({step.name}, {step.tasks} tasks); Ctrl-C stops waiting, the "
        "jobs go on, and the same command later collects the result")  # fmt: skip
    with TaskProgress(step, logging_dir, poll=poll):
        while completed_tasks(logging_dir) < step.tasks:
            if not _slurm_job_alive(executor.job_id):
                raise LLMForgeError(f"Slurm job {executor.job_id} ({step.name}) ended with "
                                    f"{step.tasks - completed_tasks(logging_dir)} tasks unfinished; see "
                                    f"{logging_dir / 'slurm_logs'}; re-run the same command to resubmit them")  # fmt: skip
            time.sleep(poll)


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def step_stats(logging_dir: Path) -> list[dict[str, float]]:
    """Per pipeline block, datatrove's counters summed over every task of the step (finished in this run or an
    earlier, interrupted one): [{"total": 10, "forwarded": 8, "dropped": 2, "dropped_reason": 2, ...}, ...]."""
    from datatrove.utils.stats import PipelineStats

    merged = PipelineStats()
    for file in sorted((Path(logging_dir) / "stats").glob("*.json")):
        merged += PipelineStats.from_json(json.loads(file.read_text()))
    return [{key: _total(value) for key, value in block.stats.items()} for block in merged.stats]


def _total(value) -> float:
    """A counter as datatrove saves it: a MetricStats, its dict form, or a bare number."""
    if isinstance(value, dict):
        return value.get("total", 0)
    return getattr(value, "total", value)


# A filter-like block's row in a data stage's stats: documents in, out and removed, and the removed documents by
# reason (datatrove's `dropped_<reason>` counters) when it gives reasons. A TypedDict call: `in` is a keyword.
FilterCounts = TypedDict(
    "FilterCounts", {"in": int, "out": int, "removed": int, "reasons": NotRequired[dict[str, int]]}
)


def filter_counts(counters: dict[str, float]) -> dict[str, Any]:
    """in / out / removed (and why) for a filter-like block, from its datatrove counters."""
    total = int(counters.get("total", 0))
    kept = int(counters.get("forwarded", 0))
    row: dict[str, Any] = {"in": total, "out": kept, "removed": total - kept}
    reasons = {k.removeprefix("dropped_"): int(v) for k, v in counters.items() if k.startswith("dropped_")}
    if reasons:
        row["reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    return row
