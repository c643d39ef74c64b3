"""The artifact contract (DESIGN.md §1) on a small stage body: fingerprints, no-op re-runs, refusals, resume."""

import json
import os

import pytest
from helpers import llmforge

from llmforge.artifacts import MANIFEST, Artifact, open_artifact, raw_input, run_stage, staging_path
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
