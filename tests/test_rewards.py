import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from llmforge.errors import InputError
from llmforge.rewards import load_reward, parse_spec
from llmforge.rewards.answers import extract_code, final_answer
from llmforge.rewards.math_answer import equivalent, math_reward
from llmforge.rewards.sandbox import Limits, code_reward, isolation_prefix, run_python
from llmforge.rewards.text import exact_reward, format_reward, json_reward

QUICK = Limits(timeout_s=2.0, memory_mb=256, output_bytes=4096)


def chat(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so the result is \\boxed{\\frac{1}{2}}", "1/2"),
        ("Adding up we get 42.\n#### 42", "42"),
        ("<think>2*21</think><answer>42</answer>", "42.0"),
        ("\\boxed{0.5}", "\\frac{2}{4}"),
        ("\\boxed{x^2+2x+1}", "(x+1)^2"),
        ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
        ("#### 1,000", "1000"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{(1, 2)}", "(1,2)"),
    ],
)
def test_math_reward_accepts_equivalent_answers(text, answer):
    assert math_reward([text], [answer]) == [1.0]
    assert math_reward([chat(text)], [answer]) == [1.0]  # conversational completions too


@pytest.mark.parametrize(
    "text, answer",
    [
        ("\\boxed{41}", "42"),
        ("the answer is 42", "42"),  # no committed final answer
        ("\\boxed{x^2+1}", "(x+1)^2"),
        ("\\boxed{__import__('os')}", "0"),  # never evaluated
        ("\\boxed{(1, 2)}", "(2,1)"),
    ],
)
def test_math_reward_rejects_wrong_or_missing_answers(text, answer):
    assert math_reward([text], [answer]) == [0.0]


def test_reference_answers_may_be_worked_solutions():
    assert math_reward(["\\boxed{7}"], ["3 plus 4 is 7\n#### 7"]) == [1.0]
    assert equivalent("3/4", "0.75") and not equivalent("3/4", "0.7")


def test_final_answer_and_code_extraction():
    assert final_answer("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert final_answer("no answer here") is None
    assert (
        extract_code("<think>plan</think>```python\ndef f():\n    return 1\n```")
        == "def f():\n    return 1\n"
    )
    assert extract_code("<think>plan</think>def g(): pass") == "def g(): pass"


def test_exact_reward():
    assert exact_reward(["  Paris ", "<answer>Paris</answer>", "paris", "Paris, France"], ["Paris"] * 4) == [
        1.0,
        1.0,
        0.0,
        0.0,
    ]


def test_format_reward_strict_and_partial():
    completions = [
        "<think>add them</think> <answer>7</answer>",
        "<think>add them</think>7",
        "<answer>7</answer> trailing",
        "7",
        "<think>a</think><think>b</think><answer>7</answer>",
    ]
    assert format_reward(completions) == pytest.approx([1.0, 0.4, 0.4, 0.0, 0.4])


def test_json_reward_against_schema():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    completions = ['{"name": "Ada"}', '```json\n{"name": "Ada"}\n```', '{"name": 3}', "name: Ada", '{"x": 1}']
    assert json_reward(completions, schema=[schema] * 5) == [1.0, 1.0, 0.5, 0.0, 0.5]
    assert json_reward(["[1, 2]"], schema=[None]) == [1.0]  # no schema: any JSON


def test_code_reward_runs_the_tests():
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",
        "def add(a, b) return",  # a syntax error
        "import sys\nsys.exit(0)",  # leaving before the tests is not passing
        "import os\nos._exit(0)",
    ]
    assert code_reward(completions, [tests] * 5, limits=QUICK) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert code_reward(["def add(a, b):\n    return a + b"], [["assert add(1, 1) == 2"]], limits=QUICK) == [
        1.0
    ]


def test_sandbox_kills_an_endless_loop():
    for program in ("while True:\n    pass", "import time\ntime.sleep(60)"):
        outcome = run_python(program, Limits(timeout_s=1.0, memory_mb=256))
        assert outcome.timed_out and not outcome.passed


def test_sandbox_caps_memory_and_output():
    hog = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))", QUICK)
    assert not hog.passed and not hog.timed_out and "MemoryError" in hog.stderr
    flood = run_python("print('x' * 10**7)", QUICK)
    assert not flood.passed and len(flood.stdout) <= QUICK.output_bytes


def test_sandbox_blocks_writes_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    outcomes = [
        run_python(f"open({str(target)!r}, 'w').write('x')", QUICK),
        run_python(f"import os\nos.system('touch {target}')", QUICK),
        run_python(f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])", QUICK),
        run_python(f"import os\nos.rename('program.py', {str(target)!r})", QUICK),
        run_python(f"import shutil\nshutil.copyfile('program.py', {str(target)!r})", QUICK),
        run_python(f"import os\nos.symlink('program.py', {str(target)!r})", QUICK),
    ]
    assert [o.passed for o in outcomes] == [False] * 6
    assert all("sandbox:" in o.stderr for o in outcomes), [o.stderr for o in outcomes]
    assert not target.exists()
    inside = run_python(
        "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'", QUICK
    )
    assert inside.passed


def test_sandbox_closes_the_native_ways_out(tmp_path):
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
    }
    for what, program in programs.items():
        outcome = run_python(program, QUICK)
        assert not outcome.passed, what
        assert "sandbox:" in outcome.stderr or "no attribute 'mkfifo'" in outcome.stderr, (
            what,
            outcome.stderr,
        )
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


def test_sandbox_has_no_network(listener):
    port, connections = listener
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')"
    outcome = run_python(program, QUICK)
    assert not outcome.passed and "sandbox: socket" in outcome.stderr
    time.sleep(0.3)
    assert connections == []


@pytest.mark.skipif(not isolation_prefix(), reason="unshare cannot create a network namespace here")
def test_network_namespace_stops_even_code_outside_the_audit_hook(listener):
    """The second layer on its own: a plain interpreter (no audit hook) in the namespace cannot reach the host."""
    port, connections = listener
    probe = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
    result = subprocess.run([*isolation_prefix(), sys.executable, "-I", "-c", probe], capture_output=True,
                            text=True, timeout=30, cwd="/")  # fmt: skip
    assert result.returncode != 0 and (
        "Network is unreachable" in result.stderr or "refused" in result.stderr
    )
    time.sleep(0.3)
    assert connections == []


def test_reward_specs_and_user_rewards(tmp_path, monkeypatch):
    assert parse_spec("math") == parse_spec("math:1")
    assert parse_spec("format:0.2").weight == 0.2
    spec = parse_spec("my_rewards.py:short:0.5")
    assert (spec.name, spec.weight, spec.label) == ("my_rewards.py:short", 0.5, "short")
    with pytest.raises(InputError, match="unknown reward 'maths'"):
        parse_spec("maths")

    (tmp_path / "my_rewards.py").write_text(
        "def short(completions, **kw):\n    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n"
    )
    from_file = load_reward(parse_spec(f"{tmp_path / 'my_rewards.py'}:short"))
    assert from_file.__name__ == "short" and from_file(
        prompts=["p", "p"], completions=["ok", "far too long"]
    ) == [
        1.0,
        0.0,
    ]
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = load_reward(parse_spec("my_rewards:short"))
    assert from_module(completions=["abc"]) == [1.0]
    with pytest.raises(InputError, match="has no function 'missing'"):
        load_reward(parse_spec("my_rewards:missing"))
    with pytest.raises(InputError, match="no such file"):
        load_reward(parse_spec("nowhere/rewards.py:f"))
    builtin = load_reward(parse_spec("math:2"))
    assert builtin.__name__ == "math" and builtin(completions=["\\boxed{2}"], answer=["2"]) == [1.0]


def test_sandbox_leaves_no_files_behind():
    before = {p for p in os.listdir("/tmp") if p.startswith("llmforge-sandbox-")}
    run_python("open('x', 'w').write('y')", QUICK)
    after = {p for p in os.listdir("/tmp") if p.startswith("llmforge-sandbox-")}
    assert after <= before
