"""One writer per output: an exclusive lock on `OUT.lock`, held for the whole run of a stage.

A second run into the same output stops at once (exit 2) and names the holder: pid, host, command, start time.
The lock is `flock(2)` on a file beside the output, so the kernel releases it when the holder dies, however it dies
(kill -9 included): a dead holder's lock is simply taken by the next run, no stale-lock cleanup needed.

What is promised: between processes on one machine, on any local filesystem. On NFS, Linux implements flock with
NFS byte-range locks, so the lock also holds between machines when the mount supports locking (NFSv4, or NFSv3
with lockd; not with the `nolock` mount option, where each machine sees only its own locks); the server frees a
crashed client's lock when its lease ends (NFSv4: about 90 s). Work that outlives the llmforge process (Slurm jobs
left running after Ctrl-C) is not covered by the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from llmforge.errors import InputError

LOCK_SUFFIX = ".lock"


def lock_path(out: Path) -> Path:
    return Path(str(out) + LOCK_SUFFIX)


@contextmanager
def hold_output(out: Path) -> Iterator[None]:
    """Hold the output's lock for the block; an InputError naming the holder when another run has it."""
    path = lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"{out}: cannot create the lock file {path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise InputError(f"{out}: cannot lock {path} ({exc.strerror or exc})") from None
            raise InputError(f"{out}: another run is writing this output ({holder}); wait for it to end or stop "
                             f"it (its lock is {path})") from None  # fmt: skip
        # The holder before us deletes the file as it ends: a lock on a name that no longer points at our file
        # guards nothing, so open the name again.
        try:
            ours = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            ours = False
        if ours:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode() + b"\n", 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: nobody can have locked this file meanwhile
        os.close(fd)


def _me() -> dict:
    program = "llmforge" if Path(sys.argv[0]).name in ("__main__.py", "llmforge") else sys.argv[0]
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join([program, *sys.argv[1:]]),
            "started": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote in the file (it may not have written yet)."""
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0) or b"null")
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{info['command']}")  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError):
        return "a process that has not said who it is yet"
