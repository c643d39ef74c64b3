"""Run untrusted Python (a model's code, then its unit tests) in a contained subprocess.

Each run has a fresh temporary directory and two stages: _sandbox_confine.py sets up the layers this machine
allows and execs a fresh interpreter running _sandbox_child.py, which locks Python down and runs the program.
The layers, strongest first (`isolation()` finds which work here, once, and says so on screen):
- namespaces (util-linux `unshare`: mount, pid, network, ipc, uts, and a user namespace when not root): the
  program sees a read-only root with only /usr and the interpreter's standard library, its directory at
  /sandbox, its own /proc, a few devices and no network; as root it runs as `nobody`, otherwise with no
  capabilities;
- `nobody` without namespaces, when run as root where namespaces are refused (a container);
- a seccomp filter (libseccomp, through ctypes): no new processes, sockets, FIFOs, tracing, mounts...;
- always: resource limits (CPU seconds, address space, file size, open files), a wall-clock timeout that kills
  the process group, and an audit hook that keeps Python's own functions inside the directory (the only layer
  left on a machine without namespaces and without libseccomp: containment, not a boundary).

The verdict is the child's exit status (0: the program and then the tests ran to their end), decided here;
nothing the program can read decides it. The program's output comes back through pipes this process made, read
up to `output_bytes` each: a program can neither swap the file the parent reads nor make it read without end.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from llmforge import machine

CONFINE = Path(__file__).with_name("_sandbox_confine.py")
NOBODY = 65534
READY = b"\0"  # _sandbox_child.py's first byte on stdout once it is locked down
NAMESPACES = ("unshare", "--mount", "--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child")


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): the reward cannot be computed."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock; CPU time is limited to the same (rounded up)
    memory_mb: int = 512  # address space of the interpreter and the program together
    output_bytes: int = 65536  # stdout and stderr each as read by the parent, and any file the program writes
    open_files: int = 64


@dataclass
class Outcome:
    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Isolation:
    namespaces: bool
    nobody: bool
    seccomp: bool
    missing: tuple[str, ...] = ()  # why stronger layers are not in force here

    @property
    def strong(self) -> bool:
        return self.namespaces and self.seccomp

    @property
    def label(self) -> str:
        layers = (("namespaces", self.namespaces), ("nobody", self.nobody), ("seccomp", self.seccomp))
        return " + ".join(name for name, used in layers if used) or "the audit hook alone"

    def describe(self) -> str:
        if self.namespaces:
            who = "as nobody" if self.nobody else "in a user namespace without capabilities"
            layers = [f"namespaces (mount, pid, network, ipc, uts) {who}: a read-only root holding only /usr and "
                      "the standard library, its own directory, its own /proc, no network"]  # fmt: skip
        else:
            who = "nobody" if self.nobody else "root" if os.geteuid() == 0 else "the trainer's user"
            layers = [f"no namespaces: the program sees this machine's files and processes as {who}, and only "
                      "Python's audit hook keeps its writes in its directory"]  # fmt: skip
        layers.append("a seccomp filter (no new processes, no sockets)" if self.seccomp else
                      "no seccomp filter" + ("" if self.namespaces else ": only the audit hook refuses sockets"))  # fmt: skip
        layers.append("an audit hook and resource limits")
        text = "; ".join(layers)
        return text + (f" ({'; '.join(self.missing)})" if self.missing else "")


def _candidates() -> list[Isolation]:
    """Every combination worth trying, strongest first."""
    root = os.geteuid() == 0
    users = [(True, root), (False, True), (False, False)] if root else [(True, False), (False, False)]
    return [
        Isolation(namespaces, nobody, seccomp) for namespaces, nobody in users for seccomp in (True, False)
    ]


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The strongest isolation that works on this machine, found by running a small program under each candidate;
    says once on screen what is in force."""
    from llmforge.console import log, warn

    missing: list[str] = []
    chosen = Isolation(False, False, False)
    probe = Limits(timeout_s=30.0)
    for candidate in _candidates():
        if candidate.namespaces and shutil.which("unshare") is None:
            _note(missing, "namespaces", "util-linux `unshare` is not installed")
            continue
        try:
            outcome = _run(candidate, "import json, decimal, tempfile", "", probe)
        except SandboxError as exc:
            _note(missing, candidate.label, str(exc))
            continue
        if outcome.passed:
            chosen = candidate
            break
        first = (outcome.stderr.strip().splitlines() or [f"exit status {outcome.returncode}"])[0]
        _note(missing, candidate.label, f"a program failed: {first}")
    chosen = Isolation(chosen.namespaces, chosen.nobody, chosen.seccomp, tuple(missing))
    (log if chosen.strong else warn)(f"code sandbox: {chosen.describe()}")
    return chosen


def _note(missing: list[str], layers: str, reason: str) -> None:
    if not any(
        note.endswith(f": {reason}") for note in missing
    ):  # each reason once, with the first layers it hit
        missing.append(f"{layers}: {reason}")


def run_python(
    program: str, limits: Limits = Limits(), tests: str = "", *, audit_hook: bool = True
) -> Outcome:
    """Run `program` and then `tests` contained; passed when both ran to their end (asserts hold, nothing raised,
    no early exit). `audit_hook=False` leaves Python unguarded, to test the kernel's layers on their own."""
    return _run(isolation(), program, tests, limits, audit_hook)


def _run(layers: Isolation, program: str, tests: str, limits: Limits, audit_hook: bool = True) -> Outcome:
    workdir = Path(tempfile.mkdtemp(prefix="llmforge-sandbox-"))
    try:
        box = workdir / "box"  # the program's directory; `root` is where the namespaces build its view
        box.mkdir()
        (workdir / "root").mkdir()
        if layers.nobody:
            os.chown(box, NOBODY, NOBODY)
        settings = {**asdict(layers), "root": str(workdir / "root"), "limits": asdict(limits)}
        settings.pop("missing")
        command = [sys.executable, "-I", "-S", "-B", str(CONFINE), json.dumps(settings)]
        if layers.namespaces:
            command = [
                *NAMESPACES,
                *(() if os.geteuid() == 0 else ("--user", "--map-root-user")),
                "--",
                *command,
            ]
        request = json.dumps({"program": program, "tests": tests, "audit_hook": audit_hook}).encode()
        process = subprocess.Popen(command, cwd=box, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)  # fmt: skip
        stdout, stderr, timed_out = _communicate(process, request, limits)
    finally:
        _remove(workdir)
    err = stderr.decode("utf-8", "replace")
    if not stdout.startswith(READY):  # the program never started: the sandbox failed, not the program
        reason = err.strip().splitlines()[-1] if err.strip() else f"exit status {process.returncode}"
        raise SandboxError(reason)
    passed = not timed_out and process.returncode == 0
    return Outcome(passed=passed, returncode=process.returncode, timed_out=timed_out,
                   stdout=stdout[len(READY):].decode("utf-8", "replace"), stderr=err)  # fmt: skip


def _communicate(process: subprocess.Popen, request: bytes, limits: Limits) -> tuple[bytes, bytes, bool]:
    """Send the request, read stdout and stderr up to the limit each (a pipe over it is closed: the writer gets
    EPIPE), and kill the process group at the deadline."""
    deadline = time.monotonic() + limits.timeout_s
    try:
        process.stdin.write(request)
        process.stdin.close()
    except BrokenPipeError:  # it ended before reading: its exit status and stderr say why
        pass
    kept = {process.stdout: bytearray(), process.stderr: bytearray()}
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for pipe in kept:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map() and not timed_out:
            remaining = deadline - time.monotonic()
            timed_out = remaining <= 0
            for key, _ in selector.select(max(remaining, 0)):
                chunk = os.read(key.fd, 65536)
                buffer = kept[key.fileobj]
                buffer += chunk[: limits.output_bytes + len(READY) - len(buffer)]
                if not chunk or len(buffer) >= limits.output_bytes + len(READY):
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
    try:
        process.wait(timeout=0 if timed_out else max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:  # it closed its output and kept running
        timed_out = True
    if timed_out:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    for pipe in kept:
        pipe.close()
    return bytes(kept[process.stdout]), bytes(kept[process.stderr]), timed_out


def _remove(workdir: Path) -> None:
    """Delete the run's directory, also what the program locked (a folder without permissions)."""
    for parent, folders, _ in os.walk(workdir):
        for folder in folders:
            path = os.path.join(parent, folder)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    shutil.rmtree(workdir, ignore_errors=True)


def run_many(programs: list[str], limits: Limits = Limits(), tests: list[str] | None = None,
             workers: int | None = None) -> list[Outcome]:  # fmt: skip
    """Run programs side by side (each in its own sandbox), results in order."""
    tests = tests if tests is not None else [""] * len(programs)
    workers = workers or min(len(programs), machine.cpu_count()) or 1
    isolation()  # probe once, before the threads
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            pool.map(lambda pair: run_python(pair[0], limits, pair[1]), zip(programs, tests, strict=True))
        )


def code_reward(completions, tests, limits: Limits = Limits(), **_) -> list[float]:
    """1.0 when the completion's code (last fenced block, else <answer> content, else the text) and then the
    record's `tests` (Python asserts: one string or a list) run to their end in the sandbox."""
    from llmforge.rewards.answers import completion_text, extract_code

    programs = [extract_code(completion_text(completion)) for completion in completions]
    test_code = ["\n".join(test) if isinstance(test, list) else str(test) for test in tests]
    return [float(outcome.passed) for outcome in run_many(programs, limits, test_code)]
