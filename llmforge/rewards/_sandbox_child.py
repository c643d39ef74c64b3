"""Runs inside the sandbox process (cwd = its temporary directory): read the program, lock the process down with an
audit hook that cannot be removed, run the program, and print the token proving it ran to its end.

The token stops the easy shortcuts (`exit(0)` or `os._exit(0)` before the tests run); it lives in this process, so
a program that digs through the interpreter's memory could still forge a pass. Containment does not rely on it.

Standard library only: this file is executed by `python -I`, not imported by llmforge.
"""

import os
import sys

ROOT = os.path.realpath(os.getcwd())
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# No network, no new processes or interpreters, no signals to others, no native code, no raising the limits.
BLOCKED = {
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyaddr", "socket.sendto", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
    "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.chdir", "os.chroot", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof", "urllib.Request", "ftplib.connect", "smtplib.connect",
    "webbrowser.open", "pty.spawn", "resource.setrlimit", "resource.prlimit", "cpython.PyInterpreterState_New",
    "sqlite3.connect",  # sqlite writes files without audit events (ATTACH DATABASE)
}  # fmt: skip
# Native code that acts without audit events: _posixsubprocess.fork_exec starts processes (subprocess and
# multiprocessing call it); subinterpreters run without this hook; dbm writes files. _posixsubprocess is loaded
# before the hook with fork_exec disabled, so `import subprocess` (asyncio does) still works; loading any of these
# afresh is refused.
BLOCKED_IMPORTS = {"_posixsubprocess", "_xxsubinterpreters", "_dbm", "_gdbm"}
# Functions that write without raising an audit event; removed before the program runs. (CPython can rebuild
# the posix module through _imp.create_builtin without an event: the hook is not a complete barrier on its own.)
UNAUDITED = ("mkfifo", "mknod")
# Events whose path arguments must stay inside ROOT: (path index, index of its dir_fd argument or None).
PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)), "os.symlink": ((0, 2), (1, 2)), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
    "os.utime": ((0, 3),), "os.truncate": ((0, None),), "os.chflags": ((0, None),),
    "os.setxattr": ((0, None),), "os.removexattr": ((0, None),), "shutil.rmtree": ((0, 1),),
    "shutil.copyfile": ((0, None), (1, None)), "shutil.move": ((0, None), (1, None)),
}  # fmt: skip


def _descriptor_path(fd):
    """The file an open descriptor refers to, or None for a pipe, a socket or a closed descriptor."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target if target.startswith("/") else None


def _target(path, dir_fd=None):
    """The absolute path an event acts on (a descriptor's file, or a path relative to ROOT or to dir_fd)."""
    if isinstance(path, int):
        return _descriptor_path(path)
    path = os.fsdecode(path)
    base = ROOT
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
        base = _descriptor_path(dir_fd) or ROOT
    return os.path.realpath(os.path.join(base, path))


def _inside(target) -> bool:
    return target is None or target == ROOT or target.startswith(ROOT + os.sep)


def _writes(mode, flags) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & WRITE_FLAGS)


def _guard(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args and args[0] in BLOCKED_IMPORTS:
        raise ImportError(f"sandbox: loading {args[0]} is not allowed")  # ImportError: callers fall back
    if event == "open" and args and args[0] is not None:
        target = _target(args[0])
        if not _inside(target):
            if _writes(args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else 0):
                raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox directory")
            if os.path.isdir(target):  # a descriptor of it would reach outside through dir_fd arguments
                raise PermissionError(
                    f"sandbox: opening the directory {args[0]!r} outside the sandbox directory"
                )
    for index, dir_fd_index in PATH_EVENTS.get(event, ()):
        if index >= len(args) or args[index] is None:
            continue
        dir_fd = args[dir_fd_index] if dir_fd_index is not None and dir_fd_index < len(args) else None
        if not _inside(_target(args[index], dir_fd)):
            raise PermissionError(f"sandbox: {event} on {args[index]!r} outside the sandbox directory")


def _no_processes(*args, **kwargs):
    raise PermissionError("sandbox: starting processes is not allowed")


def _remove_unaudited() -> None:
    import _posixsubprocess
    import posix

    _posixsubprocess.fork_exec = _no_processes
    for name in UNAUDITED:
        for module in (os, posix):
            if hasattr(module, name):
                delattr(module, name)


def main() -> int:
    with open("program.py", encoding="utf-8") as handle:
        program = handle.read()
    token = sys.stdin.readline().strip()
    sys.stdin.close()
    _remove_unaudited()
    sys.addaudithook(_guard)
    code = compile(program, "program.py", "exec")
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as exc:  # SystemExit included: leaving early is not passing
        print(f"{type(exc).__name__}: {exc}"[:2000], file=sys.stderr, flush=True)
        return 1
    sys.stdout.flush()
    print(f"\n{token}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
