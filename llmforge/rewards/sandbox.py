"""Run untrusted Python (a model's code plus its unit tests) in a contained subprocess.

Layers, each enough to stop the common escapes on its own:
- resource limits set before exec: CPU seconds, address space (memory), file size (caps output and files written),
  open files; a wall-clock timeout kills the whole process group (a `sleep` burns no CPU);
- its own temporary directory as cwd (and TMPDIR), deleted afterwards; an audit hook (`sys.addaudithook`, which
  Python code cannot remove) refuses writes, renames and deletes outside it (by path, descriptor or dir_fd),
  directory descriptors outside it, sockets, subprocesses, `os.system`, signals, ctypes, raising its resource limits,
  subinterpreters and sqlite; native functions that write or start processes without an audit event are disabled;
- where `unshare` works (root, or unprivileged user namespaces), a fresh network namespace with no interfaces but
  a down loopback, and as root the program runs as `nobody`.
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from llmforge import machine

CHILD = Path(__file__).with_name("_sandbox_child.py")
NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock; CPU time is limited to the same (rounded up)
    memory_mb: int = 512  # address space of the interpreter and the program together
    output_bytes: int = 65536  # stdout + stderr each, and any file the program writes
    open_files: int = 64


@dataclass
class Outcome:
    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str


@functools.lru_cache(maxsize=1)
def isolation_prefix() -> tuple[str, ...]:
    """The `unshare` command line that gives the child no network (and, as root, no privileges), if one works.

    Each candidate is probed by starting this interpreter under it: as `nobody`, an interpreter installed under a
    private home directory cannot start, and then the network namespace alone is used.
    """
    if shutil.which("unshare") is None:
        return ()
    if os.geteuid() == 0:
        candidates = [("unshare", "--net", "--setuid", str(NOBODY), "--setgid", str(NOBODY), "--"),
                      ("unshare", "--net", "--")]  # fmt: skip
    else:
        candidates = [("unshare", "--user", "--map-current-user", "--net", "--")]
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=30,
                                   cwd="/")  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def runs_as_nobody() -> bool:
    return "--setuid" in isolation_prefix()


def _apply_limits(limits: Limits) -> None:
    # runs in the forked child before exec: no imports here (the parent may hold the import lock in a thread)
    cpu = int(limits.timeout_s) + 1
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(program: str, limits: Limits = Limits()) -> Outcome:
    """Run `program` contained; it passes when it runs to its end without an exception (asserts included)."""
    prefix = isolation_prefix()
    workdir = Path(tempfile.mkdtemp(prefix="llmforge-sandbox-"))
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        if runs_as_nobody():  # the child runs as nobody: give it its directory, and only that
            os.chown(workdir, NOBODY, NOBODY)
        token = secrets.token_hex(16)
        command = [*prefix, sys.executable, "-I", "-B", str(CHILD)]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir),
               "PYTHONHASHSEED": "0"}  # fmt: skip
        with open(workdir / ".stdout", "wb") as out, open(workdir / ".stderr", "wb") as err:
            process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=out,
                                       stderr=err, start_new_session=True,
                                       preexec_fn=functools.partial(_apply_limits, limits))  # fmt: skip
            timed_out = False
            try:
                process.communicate(input=(token + "\n").encode(), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        stdout = (workdir / ".stdout").read_bytes()[: limits.output_bytes].decode("utf-8", "replace")
        stderr = (workdir / ".stderr").read_bytes()[: limits.output_bytes].decode("utf-8", "replace")
        finished = stdout.rstrip().endswith(token)
        passed = not timed_out and process.returncode == 0 and finished
        return Outcome(passed=passed, returncode=process.returncode, timed_out=timed_out,
                       stdout=stdout.replace(token, "").rstrip(), stderr=stderr)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_many(programs: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[Outcome]:
    """Run programs side by side (each in its own sandbox), results in order."""
    workers = workers or min(len(programs), machine.cpu_count()) or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_python(p, limits), programs))


def code_reward(completions, tests, limits: Limits = Limits(), **_) -> list[float]:
    """1.0 when the completion's code (last fenced block, else <answer> content, else the text) passes the record's
    `tests` (Python asserts: one string or a list), run in the sandbox."""
    from llmforge.rewards.answers import completion_text, extract_code

    programs = []
    for completion, test in zip(completions, tests, strict=True):
        test_code = "\n".join(test) if isinstance(test, list) else str(test)
        programs.append(extract_code(completion_text(completion)) + "\n\n" + test_code + "\n")
    return [float(outcome.passed) for outcome in run_many(programs, limits)]
