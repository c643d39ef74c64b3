"""First stage of a sandboxed run: confine this process, then replace it with a fresh interpreter that runs
_sandbox_child.py (the second stage, which runs the program).

llmforge/rewards/sandbox.py starts it as `python -I -B _sandbox_confine.py SETTINGS` (inside `unshare` when
namespaces are in force), with the sandbox directory as the working directory. SETTINGS (JSON) names the
layers:
- namespaces: a new root that holds only /usr and the interpreter's prefix (read-only), the program's
  directory at /sandbox, a /proc of this pid namespace and a few devices; the old root is detached
  (pivot_root). `unshare` made the namespaces; this process is their root.
- nobody: drop to user and group `nobody` (when started as root); in a user namespace every capability is
  dropped instead, the bounding set too, so that no later exec regains any.
- resource limits, no new privileges, and with `seccomp` a filter (libseccomp) that refuses new processes,
  sockets, device and FIFO nodes, tracing or reading other processes, mounts and namespaces, raising limits,
  and the kernel's larger attack surface (bpf, io_uring, keyrings, modules...).
The interpreter that runs the program is then loaded fresh (`-s -S -B`: the standard library only), so it
never held ctypes, which this stage needs.

A layer that cannot be set up ends this process with status 3 and one line on stderr, before the program is
read (the parent sees no ready byte and knows the sandbox failed, not the program). Standard library only:
executed by the interpreter, not imported by llmforge.
"""

import ctypes
import json
import os
import resource
import sys

SETUP_FAILED = 3
NOBODY = 65534
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
DEVICES = ("null", "zero", "full", "random", "urandom")
# mount(2) flags; ST_* of statvfs have the same values
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18  # fmt: skip
LOCKED = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME | os.ST_RELATIME
MNT_DETACH = 2
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}  # system call numbers; elsewhere chroot
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
# seccomp: every system call is allowed except these, which fail with EPERM
DENIED = (
    "fork", "vfork", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "pidfd_getfd", "pidfd_send_signal", "kill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",  # other processes
    "socket", "socketpair", "mknod", "mknodat",  # network, devices and FIFOs
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",  # the file system's shape and the namespaces
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl",
    "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "name_to_handle_at", "open_by_handle_at", "iopl",
    "ioperm", "personality", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname", "vhangup", "fanotify_init", "lookup_dcookie", "setrlimit",  # the kernel's wider surface
)  # fmt: skip
CLONE_THREAD = 0x10000
SCMP_ACT_ALLOW, SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000
SCMP_CMP_NE, SCMP_CMP_MASKED_EQ = 1, 7

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(number)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    encode = lambda text: None if text is None else os.fsencode(text)  # noqa: E731
    result = libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data))
    _check(result, f"mount {source or fstype} on {target}")


def _bind(source: str, target: str, writable: bool = False, device: bool = False) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    # a remount must keep the flags the original mount has (a user namespace may not clear them)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (os.statvfs(source).f_flag & LOCKED)
    flags |= (0 if writable else MS_RDONLY) | (0 if device else MS_NODEV)
    _mount(None, target, None, flags)


def enter_new_root(root: str, prefix: str) -> None:
    """Build the program's view of the file system on a tmpfs at `root` and make it this process's root."""
    box = os.getcwd()
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink(f"/{name}"):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink(f"/{name}"), f"{root}/{name}")
        elif os.path.isdir(f"/{name}"):
            os.mkdir(f"{root}/{name}")
            _bind(f"/{name}", f"{root}/{name}")
    if not os.path.isdir(root + prefix):  # an interpreter outside /usr (pyenv, conda, a home directory)
        os.makedirs(root + prefix)
        _bind(prefix, root + prefix)
    os.mkdir(f"{root}/sandbox")
    _bind(box, f"{root}/sandbox", writable=True)
    os.mkdir(f"{root}/proc")
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(f"{root}/dev")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _bind(f"/dev/{name}", f"{root}/dev/{name}", writable=True, device=True)
    _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    number = PIVOT_ROOT.get(os.uname().machine)
    if number is not None:  # the old root goes away entirely
        _check(libc.syscall(number, b".", b"."), "pivot_root")
        _check(libc.umount2(b".", MNT_DETACH), "detaching the old root")
    else:
        os.chroot(".")
    os.chdir("/sandbox")


class _CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapabilitySet(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_privileges(nobody: bool) -> None:
    if nobody:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)  # clears every capability
    else:  # root of a user namespace: keep the user, lose the capabilities, now and after any exec
        for capability in range(64):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                break  # past the last capability this kernel knows
        _check(libc.capset(ctypes.byref(_CapabilityHeader(0x20080522, 0)), (_CapabilitySet * 2)()), "capset")


class _Condition(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]  # fmt: skip


def load_seccomp_filter() -> None:
    try:
        seccomp = ctypes.CDLL("libseccomp.so.2")
    except OSError as exc:
        raise SetupError(f"libseccomp is not available ({exc})") from None
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_Condition)]  # fmt: skip
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    context = seccomp.seccomp_init(SCMP_ACT_ALLOW)
    if not context:
        raise SetupError("seccomp_init failed")

    def refuse(name, errno=1, *conditions):  # errno 1: EPERM
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call on this architecture
            return
        array = (_Condition * max(len(conditions), 1))(*conditions)
        result = seccomp.seccomp_rule_add_array(
            context, SCMP_ACT_ERRNO | errno, number, len(conditions), array
        )
        if result < 0:
            raise SetupError(f"seccomp rule for {name}: {os.strerror(-result)}")

    for name in DENIED:
        refuse(name)
    refuse("clone", 1, _Condition(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0))  # threads stay allowed
    # ENOSYS: clone3's flags lie in memory a filter cannot read; the C library then falls back to clone
    refuse("clone3", 38)
    refuse("prlimit64", 1, _Condition(2, SCMP_CMP_NE, 0, 0))  # reading a limit stays allowed
    result = seccomp.seccomp_load(context)
    if result < 0:
        raise SetupError(f"seccomp_load: {os.strerror(-result)}")


def set_limits(limits: dict) -> None:
    cpu = int(limits["timeout_s"]) + 1
    memory = limits["memory_mb"] * 1024 * 1024
    for kind, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory),
                        (resource.RLIMIT_FSIZE, limits["output_bytes"]),
                        (resource.RLIMIT_NOFILE, limits["open_files"]), (resource.RLIMIT_CORE, 0)):  # fmt: skip
        resource.setrlimit(kind, (value, value))


def main() -> None:
    settings = json.loads(sys.argv[1])
    with open(CHILD, encoding="utf-8") as handle:
        child = handle.read()
    prefix = os.path.realpath(sys.base_prefix)
    interpreter = os.path.join(prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    try:
        if settings["namespaces"]:
            enter_new_root(settings["root"], prefix)
        if settings["nobody"] or settings["namespaces"]:
            drop_privileges(settings["nobody"])
        set_limits(settings["limits"])
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        if settings["seccomp"]:
            load_seccomp_filter()
    except (OSError, SetupError) as exc:
        print(f"sandbox setup failed: {exc}", file=sys.stderr, flush=True)
        os._exit(SETUP_FAILED)
    home = os.getcwd()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home, "PYTHONHASHSEED": "0"}
    try:  # no site packages, no user site, no bytecode files: the standard library only
        os.execve(interpreter, [interpreter, "-s", "-S", "-B", "-c", child], env)
    except OSError as exc:
        print(f"sandbox setup failed: cannot start {interpreter} ({exc})", file=sys.stderr, flush=True)
        os._exit(SETUP_FAILED)


if __name__ == "__main__":
    main()
