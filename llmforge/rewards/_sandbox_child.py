"""Second stage of a sandboxed run, started by _sandbox_confine.py in a process already confined: read the
request (program and tests, JSON on stdin), lock the interpreter down, then run the program and after it the
tests, in one namespace.

The exit status is the verdict, read by the parent: 0 only when the program and the tests ran to their end. No
secret is involved, so there is none to steal; instead the program has no way to end this process with status
0 early. SystemExit is caught; os._exit is removed and cannot be rebuilt (_imp.create_builtin hands out only
the modules already loaded, and a loaded module is never loaded afresh); signal handlers cannot be set, so no
exception arrives out of turn; tracing (a tracer's changes to f_locals are written back into the frame) and
further audit hooks are refused; the failure path raises an exception whose class was taken before the program
ran, so the program's changes to builtins, sys.exit or excepthooks do not matter. Native code could fake a
pass (ctypes.cast reads and writes any memory without an audit event), so native modules load only from the
standard library, ctypes not among them. The tests are never on disk: a program cannot read the expected
answers there.

The audit hook (`sys.addaudithook`, which Python code cannot remove) refuses writes, renames and deletes
outside the working directory (by path, descriptor or dir_fd), directory descriptors outside it, sockets,
subprocesses, `os.system`, signals to processes, ctypes, raising its resource limits, subinterpreters and
sqlite. The program can reach this module's globals (through any frame's f_back) and can replace any module's
functions, so the hook reads neither: it is a closure over constants and C functions taken before the program
runs, and it converts path arguments to plain strings itself (a str subclass answers methods such as
startswith() as it likes, while the system call uses its characters). Where the namespaces and seccomp are in
force the kernel holds most of this anyway; the hook keeps the same rules on every machine, so that a
completion scores the same everywhere.

Standard library only: this file's text is executed by a fresh interpreter (`python -c`), not imported.
"""

import _imp
import json
import os
import sys

READY = b"\0"  # first byte on stdout: the sandbox is set up, from here on failures are the program's
# No network, no new processes or interpreters, no signals to others, no raising the limits, no tracing (which
# can rewrite main()'s locals), no second audit hook, no walking the heap to functions taken out of reach.
BLOCKED = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyaddr", "socket.sendto", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
    "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.chdir", "os.chroot", "urllib.Request",
    "ftplib.connect", "smtplib.connect", "webbrowser.open", "pty.spawn", "resource.setrlimit", "resource.prlimit",
    "cpython.PyInterpreterState_New", "sqlite3.connect", "sys.addaudithook", "sys.settrace", "sys.setprofile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})  # fmt: skip
# Native code that acts without audit events: ctypes reads and writes any memory (ctypes.cast raises no event);
# _posixsubprocess.fork_exec starts processes; subinterpreters run without this hook; dbm writes files; shared
# memory creates files in /dev/shm; the test modules reach the interpreter's internals.
BLOCKED_IMPORTS = frozenset({
    "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels", "_dbm", "_gdbm", "_posixshmem",
    "_testcapi", "_testinternalcapi", "_testmultiphase", "_testbuffer", "_testclinic", "_testimportmultiple",
})  # fmt: skip
# Functions that write or end the process without an audit event; removed before the program runs.
UNAUDITED = ("mkfifo", "mknod", "_exit")
# Events whose path arguments must stay inside the directory: (path index, index of its dir_fd or None). Only
# events raised by C code, whose arguments are what the system call uses (Python-level ones such as
# shutil.copyfile are followed by these).
PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)), "os.symlink": ((0, 2), (1, 2)), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
    "os.utime": ((0, 3),), "os.truncate": ((0, None),), "os.chflags": ((0, None),),
    "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
}  # fmt: skip
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
S_IFMT, S_IFDIR, S_IFLNK = 0o170000, 0o040000, 0o120000


def make_guard(root: str, dynload: str | None, modules: dict):  # noqa: C901 - one closure on purpose
    """The audit hook, as a closure over values and C functions taken now (see the module's docstring)."""
    import _operator
    import posix
    import types

    lstat, stat, readlink, index = posix.lstat, posix.stat, posix.readlink, _operator.index
    is_instance, length, plain_str, plain_bytes = isinstance, len, str, bytes
    denied, import_denied = PermissionError, ImportError
    blocked, blocked_imports, write_flags = BLOCKED, BLOCKED_IMPORTS, WRITE_FLAGS
    path_events = types.MappingProxyType(dict(PATH_EVENTS))  # a private copy, read-only
    inside_prefix = root.rstrip("/") + "/"

    def plain(path):
        """A path argument as a plain str or int, read from its characters (methods of a subclass never run)."""
        if is_instance(path, plain_bytes):
            return plain_bytes.decode(b"".join([path]), "utf-8", "surrogateescape")
        if is_instance(path, plain_str):
            return "".join([path])
        if is_instance(path, int):
            return index(path)
        raise denied("sandbox: path arguments must be str, bytes or descriptors")

    def resolve(path):
        """os.path.realpath with C functions only: absolute, `..` and every symlink followed."""
        if not path.startswith("/"):
            path = root + "/" + path
        pending, resolved, hops = path.split("/")[::-1], "", 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                resolved = resolved[: resolved.rfind("/")]
                continue
            candidate = resolved + "/" + part
            try:
                mode = lstat(candidate).st_mode
            except OSError:  # not there (yet): the rest is taken as written
                resolved = candidate
                continue
            if mode & S_IFMT != S_IFLNK:
                resolved = candidate
                continue
            hops += 1
            if hops > 40:
                raise denied("sandbox: too many levels of symbolic links")
            target = readlink(candidate)
            if target.startswith("/"):
                resolved = ""
            pending.extend(target.split("/")[::-1])
        return resolved or "/"

    def descriptor(fd):
        """The file an open descriptor refers to, or None for a pipe, a socket or a closed descriptor."""
        try:
            target = readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        return target if target.startswith("/") else None

    def target(path, dir_fd=None):
        path = plain(path)
        if is_instance(path, int):
            return descriptor(path)
        if is_instance(dir_fd, int) and index(dir_fd) >= 0 and not path.startswith("/"):
            base = descriptor(index(dir_fd))
            if base is not None:
                path = base + "/" + path
        return resolve(path)

    def inside(where):
        return where is None or where == root or where.startswith(inside_prefix)

    def is_directory(where):
        try:
            return stat(where).st_mode & S_IFMT == S_IFDIR
        except OSError:
            return False

    def guard(event, args):
        event = "".join([event])  # sys.audit() lets the program raise events too
        if event in blocked or event.startswith("ctypes."):
            raise denied(f"sandbox: {event} is not allowed")
        if event == "import" and args:  # also raised by _imp.create_dynamic, with the extension's path
            name = plain(args[0])
            if name in blocked_imports or name in modules:  # a fresh copy has its original functions back
                raise import_denied(
                    f"sandbox: loading {name} is not allowed"
                )  # ImportError: callers fall back
            if length(args) > 1 and is_instance(args[1], plain_str):
                path = resolve(plain(args[1]))
                if path[: path.rfind("/")] != dynload:
                    raise import_denied(
                        f"sandbox: native modules load from the standard library only, not {path}"
                    )
        if event == "open" and args and args[0] is not None:
            where = target(args[0])
            if not inside(where):
                mode = args[1] if length(args) > 1 else None
                flags = args[2] if length(args) > 2 else 0
                writes = is_instance(mode, plain_str) and (
                    "w" in mode or "a" in mode or "x" in mode or "+" in mode
                )
                if writes or (is_instance(flags, int) and index(flags) & write_flags):
                    raise denied(f"sandbox: writing {where} outside the sandbox directory")
                if is_directory(where):  # a descriptor of it would reach outside through dir_fd arguments
                    raise denied(f"sandbox: opening the directory {where} outside the sandbox directory")
        for position, dir_fd_position in path_events.get(event, ()):
            if position >= length(args) or args[position] is None:
                continue
            has_dir_fd = dir_fd_position is not None and dir_fd_position < length(args)
            dir_fd = args[dir_fd_position] if has_dir_fd else None
            where = target(args[position], dir_fd)
            if not inside(where):
                raise denied(f"sandbox: {event} on {where} outside the sandbox directory")

    return guard


def _no_processes(*args, **kwargs):
    raise PermissionError("sandbox: starting processes is not allowed")


def _no_signal_handlers(*args, **kwargs):
    raise PermissionError("sandbox: setting signal handlers is not allowed")


def _loaded_builtin(spec):
    """_imp.create_builtin's stand-in: every built-in module is loaded before the program runs, so it only ever
    hands out those (re-creating `posix` would give back mkfifo and _exit)."""
    module = sys.modules.get("".join([spec.name]))
    if module is None:
        raise ImportError(f"sandbox: loading the built-in module {spec.name} is not allowed")
    return module


def lock_down() -> None:
    import _posixsubprocess  # loaded now with fork_exec disabled, so that `import subprocess` (asyncio) works
    import _signal
    import posix

    _posixsubprocess.fork_exec = _no_processes
    for name in sys.builtin_module_names:
        if name not in BLOCKED_IMPORTS:
            __import__(name)
    _imp.create_builtin = _loaded_builtin
    _signal.signal = _no_signal_handlers
    for name in UNAUDITED:
        for module in (os, posix):
            if hasattr(module, name):
                delattr(module, name)
    # the standard library's extension modules (numpy, cffi and the like reach raw memory out of the hook's sight)
    dynload = next((os.path.realpath(p) for p in sys.path if os.path.basename(p) == "lib-dynload"), None)
    sys.addaudithook(make_guard(os.path.realpath(os.getcwd()), dynload, sys.modules))


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    if request.get("audit_hook", True):
        lock_down()
    os.write(1, READY)
    # Taken before the program runs, held only in this frame: the program may rebind builtins, sys and this
    # module's globals as it likes, and a frame's locals are not writable from Python.
    run, caught, failure = exec, BaseException, RuntimeError
    program_module = type(sys)("__main__")  # `import __main__` and pickle find the program's own namespace
    program_module.__builtins__ = __builtins__
    sys.modules["__main__"] = program_module
    namespace = program_module.__dict__
    failed = None
    try:
        program = compile(request["program"], "program.py", "exec")
        tests = compile(request["tests"], "tests", "exec")
        run(program, namespace)
        run(tests, namespace)
    except caught as exc:  # SystemExit included: leaving early is not passing
        failed = exc
    if failed is not None:
        try:  # the exception's text is the program's code too
            print(f"{type(failed).__name__}: {failed}"[:2000], file=sys.stderr, flush=True)
        except caught:
            pass
        raise failure("the program or its tests did not run to their end") from None


main()
