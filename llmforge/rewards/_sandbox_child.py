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
# No network, no new processes, no signals to others, no native code.
BLOCKED = {
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyaddr", "socket.sendto", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
    "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.chdir", "os.chroot", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof", "urllib.Request", "ftplib.connect", "smtplib.connect",
    "webbrowser.open", "pty.spawn",
}  # fmt: skip
# Events whose path arguments must stay inside ROOT.
PATH_EVENTS = {
    "os.remove": 1, "os.rename": 2, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
    "os.truncate": 1, "os.symlink": 2, "os.link": 2, "os.utime": 1, "shutil.rmtree": 1, "os.chflags": 1,
    "os.setxattr": 1, "os.removexattr": 1, "shutil.copyfile": 2, "shutil.move": 2,
}  # fmt: skip


def _inside(path) -> bool:
    if isinstance(path, int):  # an already open descriptor
        return True
    path = os.fsdecode(path)
    full = os.path.realpath(os.path.join(ROOT, path))
    return full == ROOT or full.startswith(ROOT + os.sep)


def _writes(mode, flags) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & WRITE_FLAGS)


def _guard(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if (
        event == "open"
        and args
        and _writes(args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else 0)
    ):
        if not _inside(args[0]):
            raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox directory")
    count = PATH_EVENTS.get(event)
    if count:
        for path in args[:count]:
            if path is not None and not _inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} outside the sandbox directory")


def main() -> int:
    with open("program.py", encoding="utf-8") as handle:
        program = handle.read()
    token = sys.stdin.readline().strip()
    sys.stdin.close()
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
