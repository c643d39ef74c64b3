"""The code reward's sandbox: limits, containment, the kernel's layers on their own, and hostile completions tried
through the real reward path (issue 16), on the isolation this machine offers and on the weaker ones a machine
without namespaces or libseccomp falls back to."""

import glob
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from llmforge.rewards import sandbox
from llmforge.rewards.sandbox import Isolation, Limits, code_reward, isolation, run_python

QUICK = Limits(timeout_s=3.0, memory_mb=256, output_bytes=4096)
TRIVIAL = "assert True"
HERE = isolation()
# The isolation in force here, and what a machine without namespaces (seccomp only) or without both gets
LEVELS = {
    "here": HERE,
    "seccomp only": Isolation(False, False, True),
    "audit hook only": Isolation(False, False, False),
}
needs_namespaces = pytest.mark.skipif(not HERE.namespaces, reason=f"no namespaces here: {HERE.describe()}")


@pytest.fixture(params=list(LEVELS))
def level(request, monkeypatch):
    """Runs the test under each isolation level (Python's guards must hold on every machine)."""
    monkeypatch.setattr(sandbox, "isolation", lambda: LEVELS[request.param])
    return LEVELS[request.param]


def reward(completion: str, tests: str = TRIVIAL) -> float:
    [score] = code_reward([completion], [tests], limits=QUICK)
    return score


def test_sandbox_kills_an_endless_loop():
    for program in ("while True:\n    pass", "import time\ntime.sleep(60)"):
        outcome = run_python(program, Limits(timeout_s=1.0, memory_mb=256))
        assert outcome.timed_out and not outcome.passed


def test_sandbox_caps_memory_and_output():
    hog = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))", QUICK)
    assert not hog.passed and not hog.timed_out and "MemoryError" in hog.stderr
    flood = run_python("print('x' * 10**7)", QUICK)
    assert not flood.passed and len(flood.stdout) <= QUICK.output_bytes
    # the parent stops reading at the limit, and the writer fails
    endless = run_python("while True:\n    print('x' * 1000)", QUICK)
    assert not endless.passed and len(endless.stdout) <= QUICK.output_bytes


def test_sandbox_blocks_writes_outside_its_directory(tmp_path, level):
    target = tmp_path / "escaped.txt"
    outcomes = [
        run_python(f"open({str(target)!r}, 'w').write('x')", QUICK),
        run_python(f"import os\nos.system('touch {target}')", QUICK),
        run_python(f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])", QUICK),
        run_python(f"import os\nopen('mine', 'w').close()\nos.rename('mine', {str(target)!r})", QUICK),
        run_python(
            f"import shutil\nopen('mine', 'w').close()\nshutil.copyfile('mine', {str(target)!r})", QUICK
        ),
        run_python(f"import os\nos.symlink('mine', {str(target)!r})", QUICK),
    ]
    assert [o.passed for o in outcomes] == [False] * 6
    assert all("sandbox:" in o.stderr for o in outcomes), [o.stderr for o in outcomes]
    assert not target.exists()
    inside = run_python(
        "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'", QUICK
    )
    assert inside.passed


def test_sandbox_closes_the_native_ways_out(tmp_path, level):
    """Calls that act without an audit event of their own, or through a descriptor, stay contained too."""
    target, kept = tmp_path / "escaped", tmp_path / "kept.txt"
    kept.write_text("x")
    kept.chmod(0o600)
    programs = {
        "a spawned interpreter (no hook)": "import multiprocessing as mp\n"
        f"p = mp.get_context('spawn').Process(target=open, args=({str(target)!r}, 'w'))\np.start()\np.join()",
        "a subinterpreter (no hook)": "import _xxsubinterpreters as s\n"
        f"s.run_string(s.create(), {f'open({str(target)!r}, chr(119))'!r})",
        "a write through dir_fd": f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
        "os.close(os.open('escaped', os.O_WRONLY | os.O_CREAT, dir_fd=fd))",
        "a mkdir through dir_fd": "import os\nos.mkdir('../escaped', dir_fd=os.open('.', os.O_RDONLY))",
        "chmod through a descriptor": f"import os\nos.fchmod(os.open({str(kept)!r}, os.O_RDONLY), 0o777)",
        "sqlite's ATTACH": f"import sqlite3\nsqlite3.connect(':memory:').execute(\"attach '{target}' as x\")",
        "a fifo": f"import os\nos.mkfifo({str(target)!r})",
        "raising its own limits": "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))",
        "ctypes (memory without audit events)": "import ctypes\nctypes.cast(id(1), ctypes.POINTER(ctypes.c_char))[0]",
        "shared memory": "from multiprocessing import shared_memory\nshared_memory.SharedMemory(create=True, size=8)",
    }
    refusals = ("sandbox:", "no attribute 'mkfifo'", *(("No such file",) if level.namespaces else ()))
    for what, program in programs.items():
        outcome = run_python(program, QUICK)
        assert not outcome.passed, what
        assert any(refusal in outcome.stderr for refusal in refusals), (what, outcome.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"] and kept.stat().st_mode & 0o777 == 0o600
    assert not (Path(tempfile.gettempdir()) / "escaped").exists()  # beside the sandbox's own directory
    usual = "import subprocess, tempfile\nwith tempfile.NamedTemporaryFile('w') as f:\n    f.write('x')"
    assert run_python(usual, QUICK).passed  # importing subprocess and temporary files (inside) still work


@pytest.fixture
def listener():
    """A TCP server on localhost that records whether anyone connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    connections = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connections.append(server.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connections
    stop.set()
    thread.join()
    server.close()


def test_sandbox_has_no_network(listener, level):
    port, connections = listener
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')"
    outcome = run_python(program, QUICK)
    assert not outcome.passed and "sandbox: socket" in outcome.stderr
    time.sleep(0.3)
    assert connections == []


@needs_namespaces
def test_the_kernel_holds_without_the_audit_hook(listener, tmp_path):
    """The namespaces and the filter on their own: a program with Python unguarded reaches nothing outside."""
    port, connections = listener
    (tmp_path / "outside.txt").write_text("host file")
    probe = f"""
import os, socket
assert os.getcwd() == "/sandbox" and not os.path.exists({str(tmp_path)!r})
assert sorted(os.listdir("/")) == ["bin", "dev", "lib", "lib64", "proc", "root", "sandbox", "sbin", "usr"]
assert [p for p in os.listdir("/proc") if p.isdigit()] == ["1"]  # its own processes only
assert not os.path.exists("/etc/shadow")
for attempt in (lambda: open("/usr/escaped", "w"), lambda: open("/escaped", "w"), os.fork,
                lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2),
                lambda: os.mkfifo("fifo"), lambda: os.execv("/bin/true", ["true"])):
    try:
        attempt()
    except OSError:
        continue
    raise AssertionError(f"allowed: {{attempt}}")
"""
    if HERE.nobody:
        probe += "assert os.getuid() == os.getgid() == 65534\n"
    outcome = run_python(probe, QUICK, audit_hook=False)
    assert outcome.passed, outcome.stderr
    time.sleep(0.3)
    assert connections == []


def test_sandbox_leaves_no_files_behind(level, tmp_path, monkeypatch):
    # A temp root of its own: other tests' sandboxes (pytest -n 2) come and go in the shared one
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    locked = (
        "import os\nos.makedirs('a/b')\nopen('a/b/x', 'w').write('y')\nos.chmod('a/b', 0)\nos.chmod('a', 0)"
    )
    assert run_python(locked, QUICK).passed
    assert list(tmp_path.iterdir()) == []


LIAR = """
import os
class Liar(str):  # os.path.join() asks the path whether it is absolute
    def startswith(self, *args):
        return False
"""


def test_a_path_object_that_lies_to_the_audit_hook_writes_nothing_outside(tmp_path, level):
    """open() writes where the characters say; the hook used to ask the object, which may answer as it likes."""
    file, directory = tmp_path / "escaped.txt", tmp_path / "escaped-dir"
    assert reward(f"{LIAR}open(Liar({str(file)!r}), 'w').write('x')") == 0.0
    assert reward(f"{LIAR}os.mkdir(Liar({str(directory)!r}))") == 0.0
    assert not file.exists() and not directory.exists()


def test_the_program_cannot_switch_the_audit_hook_off(tmp_path, level):
    """The hook used to call os.path.realpath, isinstance and its module's globals when it ran: the program can
    replace all three (any frame's f_back reaches the sandbox's own module)."""
    target = tmp_path / "escaped"
    attempts = {
        "realpath replaced": "import os.path\nos.path.realpath = lambda path, **kwargs: os.getcwd()",
        "builtins replaced": "import builtins\nbuiltins.isinstance = builtins.any = lambda *args: False",
        "the hook's module changed": "import sys\nhook = sys._getframe().f_back.f_globals\n"
        "hook['PATH_EVENTS'].clear()\nhook.update(BLOCKED=frozenset(), ROOT='/', _inside=lambda where: True)",
    }
    for what, attempt in attempts.items():
        for write in (f"open({str(target)!r}, 'w').write('x')", f"os.mkdir({str(target)!r})"):
            assert reward(f"import os\n{attempt}\n{write}") == 0.0, what
    assert not target.exists()


def test_a_rebuilt_posix_module_makes_no_fifo(tmp_path, level):
    target = tmp_path / "fifo"
    rebuilt = f"""
import _imp, importlib.util
posix = _imp.create_builtin(importlib.util.find_spec("posix"))
posix.mkfifo({str(target)!r})
posix.mkfifo("inside-fifo")
"""
    assert reward(rebuilt) == 0.0
    assert not target.exists()


def test_shared_memory_leaves_no_files(level):
    name = f"llmforge-test-{secrets.token_hex(4)}"
    program = f"import _posixshmem, os\n_posixshmem.shm_open('/{name}', os.O_CREAT | os.O_RDWR, 0o600)"
    try:
        assert reward(program) == 0.0
        assert not Path(f"/dev/shm/{name}").exists()
    finally:
        Path(f"/dev/shm/{name}").unlink(missing_ok=True)


@pytest.mark.skipif(
    not (HERE.namespaces or HERE.nobody), reason="without namespaces the program runs as the user"
)
def test_the_program_cannot_read_the_machines_secrets():
    assert reward("open('/etc/shadow').read()") == 0.0
    if os.geteuid() == 0:
        assert reward("import os\nassert os.geteuid() != 0 and os.getegid() != 0") == 1.0


@needs_namespaces
def test_the_program_cannot_read_the_trainers_environment():
    """The trainer (here a Python process holding a secret in its environment) runs the reward; the program
    looks for that secret in every process's environment it can see through /proc."""
    secret = secrets.token_hex(16)
    snoop = f"""
import os
found = []
for pid in os.listdir("/proc"):
    try:
        if {secret!r}.encode() in open(f"/proc/{{pid}}/environ", "rb").read():
            found.append(pid)
    except OSError:
        pass
assert found, "no process environment holds the secret"
"""
    trainer = (
        f"from llmforge.rewards.sandbox import code_reward\nprint(code_reward([{snoop!r}], [{TRIVIAL!r}]))"
    )
    env = {**os.environ, "TRAINER_SECRET": secret}
    result = subprocess.run(
        [sys.executable, "-c", trainer], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0.0]


FORGERS = {
    "the token in the caller's frame": """
import os, sys
frame = sys._getframe()
while frame is not None and "token" not in frame.f_locals:
    frame = frame.f_back
print("\\n" + frame.f_locals["token"], flush=True)
os._exit(0)
""",
    "os._exit(0) of a rebuilt posix module": """
import _imp, importlib.util
_imp.create_builtin(importlib.util.find_spec("posix"))._exit(0)
""",
    "os._exit(0) of a reloaded os module": "import importlib, os\nimportlib.reload(os)._exit(0)",
    "sys.exit made a no-op": "import sys\nsys.exit = lambda *args: None\nraise ValueError('fail')",
    "SystemExit(0) from a signal handler": """
import signal
def leave(*args):
    raise SystemExit(0)
signal.signal(signal.SIGALRM, leave)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
""",
    "a tracer that rewrites the verdict": """
import sys
main = sys._getframe().f_back  # the sandbox's own frame: a tracer's changes to f_locals are written back
def tracer(frame, event, arg):
    if frame is main and event == "line":
        frame.f_locals["failed"] = None
    return tracer
main.f_trace = tracer
sys.settrace(lambda *args: None)
""",
    "the hook's rules emptied, then a tracer": """
import sys
main = sys._getframe().f_back
main.f_globals.update(BLOCKED=frozenset(), BLOCKED_IMPORTS=frozenset())
def tracer(frame, event, arg):
    if frame is main and event == "line":
        frame.f_locals["failed"] = None
    return tracer
main.f_trace = tracer
sys.settrace(lambda *args: None)
""",
    "exec, compile and RuntimeError rebound": """
import builtins
builtins.exec = builtins.compile = lambda *args, **kwargs: None
builtins.RuntimeError = lambda *args: SystemExit(0)
""",
    "the tests swallowed by an open string": 'skipped = """',
    "SystemExit(0) from an audit hook": """
import sys
sys.addaudithook(lambda event, args: (_ for _ in ()).throw(SystemExit(0)) if event == "exec" else None)
""",
    "ctypes calling _exit": "import ctypes\nctypes.CDLL(None)._exit(0)",
}


# The forgers that do pass where Python is left unguarded (so the guards, not luck, stop them)
WORK_UNGUARDED = ("os._exit(0) of a rebuilt posix module", "os._exit(0) of a reloaded os module",
                  "a tracer that rewrites the verdict", "ctypes calling _exit")  # fmt: skip
FAILING_TESTS = "assert False, 'the tests fail'\nreached = True"


@pytest.mark.parametrize("how", FORGERS)
def test_a_failing_program_cannot_fake_a_pass(how, level):
    assert reward(FORGERS[how], tests=FAILING_TESTS) == 0.0
    if how in WORK_UNGUARDED and level is HERE:
        assert run_python(FORGERS[how], QUICK, FAILING_TESTS, audit_hook=False).passed


def test_native_modules_load_from_the_standard_library_only(level):
    """Native code is out of the audit hook's sight (ctypes.cast reads any memory without an event), and
    _imp.create_dynamic loads an extension module by path: it may load only the standard library's, minus ctypes."""
    [ctypes] = glob.glob(f"{os.path.realpath(sys.base_prefix)}/lib/python3*/lib-dynload/_ctypes.*")
    elsewhere = next(Path(sys.prefix).glob("lib/python3*/site-packages/*.so"))  # the trainer's packages
    load = "import _imp, importlib.machinery\n_imp.create_dynamic(importlib.machinery.ModuleSpec({!r}, None, origin={!r}))"
    for name, path in (("_ctypes", ctypes), (elsewhere.name.split(".")[0], str(elsewhere))):
        outcome = run_python(load.format(name, path), QUICK)
        assert not outcome.passed and "ImportError: sandbox:" in outcome.stderr, outcome.stderr
    assert run_python("import math, json, decimal", QUICK).passed


def test_deleting_its_own_files_does_not_break_the_reward(level):
    wipe = "import os\nfor name in os.listdir('.'):\n    os.remove(name)\ndef add(a, b):\n    return a + b"
    assert code_reward([wipe, wipe], ["assert add(1, 2) == 3", "assert add(1, 2) == 4"], limits=QUICK) == [
        1.0,
        0.0,
    ]


def test_the_parent_reads_only_what_the_program_printed(tmp_path, level):
    """A program that swaps what it writes to for a link to another file (or /dev/zero) reaches nothing."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET " * 10)
    swap = f"""
import os
for name in (".stdout", ".stderr", "/dev/stdout"):
    try:
        os.remove(name)
        os.symlink({str(secret)!r}, name)
    except OSError:
        pass
os.dup2(os.open("/dev/zero", os.O_RDONLY), 1)
print("mine")
"""
    outcome = run_python(swap, QUICK)
    assert "SECRET" not in outcome.stdout + outcome.stderr and not outcome.passed


def test_a_fifo_in_place_of_the_output_does_not_starve_the_parent():
    swap = """
import _imp, importlib.util, os
posix = _imp.create_builtin(importlib.util.find_spec("posix"))
for name in (".stdout", ".stderr"):
    if os.path.lexists(name):
        os.remove(name)
    posix.mkfifo(name)
"""
    result = subprocess.run([sys.executable, "-c", "from llmforge.rewards.sandbox import *\n"
                             f"print(run_python({swap!r}, Limits(timeout_s=2.0)).passed)"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "False", result.stderr


def _announcements(env: dict | None = None) -> list[str]:
    """What a fresh trainer process says about the sandbox when it loads the code reward twice."""
    program = "from llmforge.rewards import load_reward, parse_spec\nfor _ in range(2):\n" \
              "    load_reward(parse_spec('code'))"  # fmt: skip
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "400", **(env or {})})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if "code sandbox:" in line]


def test_the_isolation_in_force_is_said_once():
    [line] = _announcements()
    assert HERE.describe() in line
    assert ("warning" in line) == (not HERE.strong)


def test_without_unshare_the_sandbox_says_what_it_lost(tmp_path):
    """A machine without namespaces (here: `unshare` not on PATH) falls back, and says so as a warning."""
    for tool in ("python3",):  # PATH keeps only what the trainer itself needs
        (tmp_path / tool).symlink_to(sys.executable)
    [line] = _announcements({"PATH": str(tmp_path)})
    assert (
        "warning" in line
        and "no namespaces" in line
        and "namespaces: util-linux `unshare` is not installed" in line
    )
