"""The artifact contract (DESIGN.md §1) on a small stage body: fingerprints, no-op re-runs, refusals, resume."""

import json
import os
import shutil

import pytest
from helpers import llmforge

from llmforge.artifacts import MANIFEST, UPDATE, Artifact, open_artifact, raw_input, run_stage, staging_path
from llmforge.config import StageConfig, fingerprinted, load_config, runtime_field
from llmforge.errors import InputError


class Upper(StageConfig):
    suffix: str = "!"
    workers: int = runtime_field(1, description="processes (does not change the output)")


def upper_body(calls):
    def body(ctx):
        calls.append(ctx.resumed)
        text = "".join(open(p).read() for p in sorted(ctx.inputs[0].path.glob("*.txt")))
        (ctx.work / "out.txt").write_text(text.upper() + ctx.config.suffix)
        ctx.stats["chars"] = len(text)

    return body


@pytest.fixture
def raw_dir(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.txt").write_text("hello")
    return raw


def run_upper(raw_dir, out, config=None, calls=None, force=False):
    ref = raw_input(raw_dir)
    ref.path = raw_dir
    return run_stage("upper", "documents", config or Upper(), [ref], out, upper_body(calls if calls is not None else []),
                     force=force)  # fmt: skip


def test_manifest_records_the_contract(raw_dir, tmp_path, capsys):
    out = run_upper(raw_dir, tmp_path / "out")
    assert capsys.readouterr().out.strip() == str(out)  # stdout: the path, nothing else
    art = Artifact.open(out)
    m = art.manifest
    assert m["schema"] == "llmforge.artifact/1" and m["kind"] == "documents" and m["stage"] == "upper"
    assert m["config"] == {"suffix": "!", "workers": 1}
    assert m["inputs"][0]["kind"] == "raw" and m["inputs"][0]["files"] == 1
    assert m["stats"] == {"chars": 5}
    assert [f["path"] for f in m["files"]] == ["out.txt"] and m["files"][0]["bytes"] == 6
    assert {"argv", "started", "finished", "host", "device", "versions"} <= set(m["provenance"])
    assert art.verify() == []
    assert not staging_path(out).exists()


def test_same_inputs_same_fingerprint_and_runtime_fields_do_not_count(raw_dir, tmp_path):
    a = Artifact.open(run_upper(raw_dir, tmp_path / "a"))
    b = Artifact.open(run_upper(raw_dir, tmp_path / "b", Upper(workers=4)))
    c = Artifact.open(run_upper(raw_dir, tmp_path / "c", Upper(suffix="?")))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert fingerprinted(Upper(workers=4)) == {"suffix": "!"}


def test_rerun_is_a_noop_and_a_changed_config_is_refused(raw_dir, tmp_path):
    calls = []
    out = run_upper(raw_dir, tmp_path / "out", calls=calls)
    run_upper(raw_dir, out, calls=calls)
    assert calls == [False]  # the second run did nothing
    with pytest.raises(InputError, match=r"config.suffix: '!' -> '\?'.*--force"):
        run_upper(raw_dir, out, Upper(suffix="?"))
    (raw_dir / "a.txt").write_text("changed")
    with pytest.raises(InputError, match="input .* changed"):
        run_upper(raw_dir, out)
    run_upper(raw_dir, out, Upper(suffix="?"), force=True)
    assert (out / "out.txt").read_text() == "CHANGED?"


def test_crash_leaves_nothing_that_looks_finished_and_the_rerun_resumes(raw_dir, tmp_path):
    out = tmp_path / "out"

    def crash(ctx):
        (ctx.work / "half.txt").write_text("partial")
        raise RuntimeError("killed")

    ref = raw_input(raw_dir)
    with pytest.raises(RuntimeError):
        run_stage("upper", "documents", Upper(), [ref], out, crash)
    assert not (out / MANIFEST).exists() and not out.exists()
    with pytest.raises(InputError, match="not an llmforge artifact.*unfinished run"):
        Artifact.open(out)
    calls = []
    ref.path = raw_dir
    run_stage("upper", "documents", Upper(), [ref], out, upper_body(calls))
    assert calls == [True]  # the body was told it resumes the staged work
    # partial work of a different configuration is never silently mixed in
    with pytest.raises(RuntimeError):
        run_stage("upper", "documents", Upper(suffix="x"), [ref], tmp_path / "other", crash)
    with pytest.raises(InputError, match="interrupted run with other settings"):
        run_stage("upper", "documents", Upper(suffix="y"), [ref], tmp_path / "other", upper_body([]))


def test_input_kind_is_checked_with_a_plain_message(raw_dir, tmp_path):
    out = run_upper(raw_dir, tmp_path / "docs")
    with pytest.raises(InputError, match=r"pretrain needs a tokens artifact made by `llmforge tokenize encode`; "
                                         r".* is a documents artifact \(made by `llmforge upper`\)"):  # fmt: skip
        open_artifact(out, "pretrain", ["tokens"])


def test_unwritable_output_and_foreign_directory(raw_dir, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an llmforge artifact"):
        run_upper(raw_dir, foreign)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="not writable"):
            run_upper(raw_dir, locked / "out")


def test_config_layers_and_errors(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("suffix: from-yaml\nworkers: 2\n")
    cfg = load_config(Upper, yaml_file, ["workers=3"], {"suffix": None})
    assert cfg.suffix == "from-yaml" and cfg.workers == 3
    assert load_config(Upper, yaml_file, [], {"suffix": "flag"}).suffix == "flag"
    with pytest.raises(InputError, match="config nope: unknown setting"):
        load_config(Upper, None, ["nope=1"])
    with pytest.raises(InputError, match="config workers: Input should be a valid integer"):
        load_config(Upper, None, ["workers=many"])
    yaml_file.write_text("suffix: [unclosed\n")
    with pytest.raises(InputError, match=r"c.yaml:\d+: not valid YAML"):
        load_config(Upper, yaml_file)
    yaml_file.write_bytes(b"workers: 2\nsuffix: caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(
        InputError, match=r"c.yaml:2: not a text config file \(not valid UTF-8: byte 23 of the file"
    ):
        load_config(Upper, yaml_file)
    bad = llmforge(
        "dedup", tmp_path, "-o", tmp_path / "out", "--config", yaml_file, check=False
    )  # exit 2, named
    assert bad.returncode == 2 and f"error: {yaml_file}:2: not a text config file" in bad.stderr


def test_show_and_lineage_commands(raw_dir, tmp_path):
    parent = run_upper(raw_dir, tmp_path / "parent")
    ref = Artifact.open(parent).ref()
    child = run_stage("upper", "documents", Upper(), [ref], tmp_path / "child",
                      lambda ctx: (ctx.work / "x").write_text("x"))  # fmt: skip
    shown = llmforge("show", child)
    assert "documents" in shown.stderr and Artifact.open(child).fingerprint in shown.stderr
    manifest = json.loads(llmforge("show", "--json", child).stdout)
    assert manifest["inputs"][0]["relpath"] == "../parent"
    tree = llmforge("lineage", child).stderr
    assert str(parent) in tree and "raw" in tree and str(raw_dir) in tree
    (child / "x").write_text("tampered")
    verify = llmforge("show", "--verify", child, check=False)
    assert verify.returncode == 2 and "x: " in verify.stderr
    missing = llmforge("show", tmp_path / "nope", check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_help_lists_the_stages_and_helpers():
    from llmforge.registry import STAGES

    text = llmforge("--help").stdout
    for name in [*{s.name.split()[0] for s in STAGES}, "show", "lineage", "defaults"]:
        assert f" {name} " in text


def test_input_paths_globs_folders_and_literal_names(tmp_path):
    from llmforge.artifacts import expand_paths

    (tmp_path / "shards").mkdir()
    for name in ("b.jsonl", "a.jsonl", ".hidden", "part[train].jsonl"):
        (tmp_path / "shards" / name).write_text("{}\n")
    shards = tmp_path / "shards"
    assert expand_paths([shards / "?.jsonl"]) == [str(shards / "a.jsonl"), str(shards / "b.jsonl")]
    assert expand_paths([shards]) == [str(shards / n) for n in ("a.jsonl", "b.jsonl", "part[train].jsonl")]
    # brackets are glob syntax, but a file that exists under exactly this name is that file
    assert expand_paths([shards / "part[train].jsonl"]) == [str(shards / "part[train].jsonl")]
    assert expand_paths(["s3://bucket/cc/*.warc.gz"]) == ["s3://bucket/cc/*.warc.gz"]  # for datatrove
    with pytest.raises(InputError, match=r"c\*.jsonl: no file matches this pattern"):
        expand_paths([shards / "c*.jsonl"])
    with pytest.raises(InputError, match="missing.jsonl: no such file or directory"):
        expand_paths([shards / "missing.jsonl"])


# ---------------------------------------------------------------------------------------------------------------
# One writer per output; --force discards partial work; staging that cannot be read does not wedge a run


HOLDER = """
import sys
from pathlib import Path
from llmforge.locks import hold_output
with hold_output(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def hold_lock(out):
    """Another process holding the output's lock until its stdin closes (or it is killed)."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(
    raw_dir, tmp_path
):
    import signal
    import socket

    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(InputError) as refused:
            run_upper(raw_dir, out)
        message = str(refused.value)
        assert message.startswith(f"{out}: another run is writing this output (pid {holder.pid} on "
                                  f"{socket.gethostname()}, started 20")  # fmt: skip
        assert str(out) + ".lock" in message
        assert not out.exists() and not staging_path(out).exists()  # nothing touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the dead holder's lock; its file (and what it said) is still there, and is taken over
    assert (tmp_path / "out.lock").is_file()
    calls = []
    run_upper(raw_dir, out, calls=calls)
    assert calls == [False] and Artifact.open(out).verify() == []
    assert not (tmp_path / "out.lock").exists()  # removed by the run that held it


def test_an_up_to_date_output_is_read_without_the_lock(raw_dir, tmp_path):
    out = run_upper(raw_dir, tmp_path / "out")
    holder = hold_lock(out)
    try:
        calls = []
        assert run_upper(raw_dir, out, calls=calls) == out and calls == []
    finally:
        holder.stdin.close()
        holder.wait()


def test_force_discards_partial_work_instead_of_resuming_it(raw_dir, tmp_path):
    out = tmp_path / "out"

    def crash(ctx):
        (ctx.work / "half.txt").write_text("partial")
        raise RuntimeError("killed")

    for config in (Upper(), Upper(suffix="?")):  # partial work of this fingerprint, then of another
        with pytest.raises(RuntimeError):
            run_stage("upper", "documents", config, [raw_input(raw_dir)], out, crash)
        calls = []
        run_upper(raw_dir, out, calls=calls, force=True)
        assert calls == [False]  # not resumed
        assert not (out / "half.txt").exists() and Artifact.open(out).verify() == []
        shutil.rmtree(out)


def test_update_replaces_what_changed_and_resumes_its_own_partial_work(raw_dir, tmp_path):
    """--update, what a Makefile runs after a config changed: a different artifact is replaced and partial work of
    other settings discarded, as with --force, but partial work of these same settings is resumed."""
    out = tmp_path / "out"

    def crash(ctx):
        (ctx.work / "half.txt").write_text("partial")
        raise RuntimeError("killed")

    run_upper(raw_dir, out)  # a finished artifact of other settings in the way
    with pytest.raises(InputError, match="holds a different documents artifact"):
        run_stage("upper", "documents", Upper(suffix="?"), [raw_input(raw_dir)], out, crash)
    with pytest.raises(RuntimeError):  # killed while replacing it: partial work of these settings
        run_stage("upper", "documents", Upper(suffix="?"), [raw_input(raw_dir)], out, crash, force=UPDATE)
    calls = []
    run_upper(raw_dir, out, config=Upper(suffix="?"), calls=calls, force=UPDATE)
    # resumed, then replaced the old one
    assert calls == [True] and Artifact.open(out).config["suffix"] == "?"
    with pytest.raises(RuntimeError):  # partial work of yet other settings: not this run's, discarded
        run_stage("upper", "documents", Upper(suffix="."), [raw_input(raw_dir)], out, crash, force=UPDATE)
    calls = []
    run_upper(raw_dir, out, config=Upper(suffix=";"), calls=calls, force=UPDATE)
    assert calls == [False] and not (out / "half.txt").exists() and Artifact.open(out).verify() == []
    both = llmforge("dedup", raw_dir, "-o", tmp_path / "x", "--force", "--update", check=False)
    assert both.returncode == 2 and "give one of them" in both.stderr


@pytest.mark.parametrize("mark", ["", '{"fingerprint": "ab', "[1, 2]", None])
def test_an_unreadable_staging_mark_is_partial_work_of_unknown_origin(mark, raw_dir, tmp_path):
    out = tmp_path / "out"
    staging = staging_path(out)
    staging.mkdir()
    (staging / "half.txt").write_text("from somewhere")
    if mark is not None:
        (staging / "staging.json").write_text(mark)
    with pytest.raises(InputError, match=rf"^{staging} holds partial work of unknown origin \(its staging.json is "
                                         r"missing or unreadable\); use --force to discard it$"):  # fmt: skip
        run_upper(raw_dir, out)
    calls = []
    run_upper(raw_dir, out, calls=calls, force=True)
    assert calls == [False] and not (out / "half.txt").exists() and Artifact.open(out).verify() == []


def test_an_empty_staging_directory_is_no_work_at_all(raw_dir, tmp_path):
    """A run killed between creating OUT.partial and writing its mark left nothing worth keeping."""
    out = tmp_path / "out"
    staging_path(out).mkdir()
    calls = []
    run_upper(raw_dir, out, calls=calls)
    assert calls == [False] and Artifact.open(out).verify() == []


def test_the_staging_mark_is_written_atomically(raw_dir, tmp_path, monkeypatch):
    """A kill while the mark is written leaves no half-written staging.json under its name."""
    import llmforge.files

    def killed_mid_write(self, text, encoding=None):
        with open(self, "w", encoding=encoding) as handle:
            handle.write(text[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(llmforge.files.Path, "write_text", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        run_upper(raw_dir, tmp_path / "out")
    monkeypatch.undo()
    staging = staging_path(tmp_path / "out")
    assert not (staging / "staging.json").exists() and list(staging.iterdir()) == []
    calls = []
    run_upper(raw_dir, tmp_path / "out", calls=calls)
    assert calls == [False]


@pytest.mark.parametrize(
    "damage",
    ["", '{"schema": "llmforge.artifact/1", "kind"', '{"files": 3}', '{"schema": "llmforge.artifact/1"}'],
)
def test_force_replaces_an_artifact_whose_manifest_cannot_be_read(damage, raw_dir, tmp_path):
    out = run_upper(raw_dir, tmp_path / "out")
    (out / MANIFEST).write_text(damage)
    with pytest.raises(InputError, match=rf"^{out / MANIFEST}: .*; use --force to replace it$"):
        run_upper(raw_dir, out)
    run_upper(raw_dir, out, force=True)
    assert Artifact.open(out).verify() == [] and (out / "out.txt").read_text() == "HELLO!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


# ---------------------------------------------------------------------------------------------------------------
# Outputs against inputs


def test_an_output_equal_to_inside_or_above_an_input_is_refused(raw_dir, tmp_path):
    docs = run_upper(raw_dir, tmp_path / "docs")
    parent = Artifact.open(docs).ref()
    (tmp_path / "link").symlink_to(docs)

    def stage(inputs, out, force=True):
        return run_stage("upper", "documents", Upper(), inputs, out, lambda ctx: None, force=force)

    refusals = {
        docs: f"{docs}: the output is also an input ({docs}); write it elsewhere",
        tmp_path / "link": f"{tmp_path / 'link'}: the output is also an input ({docs}); write it elsewhere",
        tmp_path: f"{tmp_path}: the output holds the input {docs}; write it elsewhere",
        docs / "data" / "inner": f"{docs / 'data' / 'inner'}: the output lies inside the input {docs}; write it "
                                 "elsewhere",
    }  # fmt: skip
    for out, message in refusals.items():
        with pytest.raises(InputError) as refused:
            stage([parent], out)
        assert str(refused.value) == message
    assert Artifact.open(docs).verify() == []  # --force changed nothing
    # raw inputs: the files and folders they name, globs expanded
    raw = raw_input(raw_dir)
    with pytest.raises(InputError, match="the output lies inside the input"):
        stage([raw], raw_dir / "out")
    with pytest.raises(InputError, match="the output is also an input"):
        stage([raw_input(raw_dir / "a.txt")], raw_dir / "a.txt")
    globbed = raw_input(raw_dir / "*.txt")
    with pytest.raises(InputError, match="the output is also an input"):
        stage([globbed], raw_dir / "a.txt")
    assert stage([globbed], raw_dir / "out") == raw_dir / "out"  # beside the files a glob names is fine
    # inside any artifact, even one that is not an input: a finished artifact must not change
    with pytest.raises(InputError, match=rf"^{docs / 'data' / 'x'}: inside the artifact {docs}, which must not "
                                         "change; write the output elsewhere$"):  # fmt: skip
        stage([raw], docs / "data" / "x")


# ---------------------------------------------------------------------------------------------------------------
# The payload is what the manifest lists


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "a/../../x", "", "./out.txt"])
def test_manifest_entries_outside_the_artifact_are_refused_before_any_stat(entry, raw_dir, tmp_path):
    out = run_upper(raw_dir, tmp_path / "out")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"].append({"path": entry, "bytes": 1, "sha256": "0" * 64})
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=rf"^{out / MANIFEST}: 'files' lists .*, not a relative path inside the "
                                         "artifact; the manifest is damaged or tampered with$"):  # fmt: skip
        Artifact.open(out)
    verify = llmforge("show", "--verify", out, check=False)
    assert verify.returncode == 2 and "not a relative path inside the artifact" in verify.stderr


def test_verify_flags_unlisted_files_and_symbolic_links(raw_dir, tmp_path):
    out = run_upper(raw_dir, tmp_path / "out")
    outside = tmp_path / "outside.txt"
    outside.write_text("HELLO!")  # same size and bytes as out.txt
    (out / "extra.txt").write_text("added later")
    (out / "linked").symlink_to(outside)
    (out / "logs").mkdir()
    (out / "logs" / "task.log").write_text("resume state and logs are not payload")
    (out / "logs" / "escape").symlink_to(tmp_path)
    assert sorted(Artifact.open(out).verify()) == [
        "extra.txt: not listed in the manifest",
        f"linked: a symbolic link (to {outside}), not listed in the manifest",
        f"logs/escape: a symbolic link (to {tmp_path}), not listed in the manifest",
    ]
    (out / "out.txt").unlink()
    (out / "out.txt").symlink_to(outside)
    assert f"out.txt: a symbolic link (to {outside}), not the file listed" in Artifact.open(out).verify()
    with pytest.raises(InputError, match=rf"^{out / 'out.txt'}: a symbolic link, not the file"):
        Artifact.open(out).check_sizes(lambda path: True)
    verify = llmforge("show", "--verify", out, check=False)
    assert verify.returncode == 2 and "extra.txt: not listed in the manifest" in verify.stderr
