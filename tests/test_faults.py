"""Faults across the pipeline, driven as a user meets them (subprocesses, files on disk).

- kill -9 a training stage midway (pretrain, sft, dpo, grpo; and tokenize encode), then run the same command
  again: it resumes from its last complete checkpoint, throws away a checkpoint the kill cut short, and finishes
  with the steps of an uninterrupted run and an artifact that verifies;
- damage one shard of an input (truncated, bytes flipped, a broken line): the stage that reads it names the file
  in one line and exits 2, before any work where a cheap check can tell;
- settings that make no sense as numbers (inf, NaN) are refused by every stage, naming the key; a post-training
  run that diverges (a non-finite loss, gradient or weight) stops with exit 1 and publishes nothing.

The crawl-filter kill test lives in tests/e2e/test_data_stages.py (datatrove task completions).
"""

import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing

import pytest
from helpers import (
    Imported,
    chat_records,
    cli_env,
    grpo_records,
    kill_when,
    llmforge,
    preference_records,
    sentences,
    tokens_artifact,
    write_jsonl,
)
from pydantic import BaseModel
from test_cli import parse, stage_function

from llmforge import registry
from llmforge.artifacts import Artifact, InputRef, canonical_hash, run_stage
from llmforge.data.documents import iter_documents
from llmforge.errors import InputError
from llmforge.files import read_jsonl

# Two test workers share two cores: one torch thread per subprocess keeps them from thrashing.
ENV = {"OMP_NUM_THREADS": "1"}
STEPS = 16  # a checkpoint every 2 steps: the kill lands after the first one, with most of the run still to go
EVERY = 2


# ---------------------------------------------------------------------------------------------------------------
# Inputs


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("fault-data")
    return {
        "tokens": tokens_artifact(root / "tokens", tiny_tokenizer_dir, sentences(400)),
        "chat": write_jsonl(root / "chat.jsonl", chat_records(24)),
        "pairs": write_jsonl(root / "pairs.jsonl", preference_records(16)),
        "prompts": write_jsonl(root / "prompts.jsonl", grpo_records(16)),
    }


def documents(out, shards: list[list[str]]):
    """A documents artifact with one data/NNNNN.jsonl.gz per list of raw lines (a line may be broken JSON)."""

    def body(ctx):
        (ctx.work / "data").mkdir()
        for number, lines in enumerate(shards):
            with gzip.open(ctx.work / "data" / f"{number:05d}.jsonl.gz", "wt") as handle:
                handle.writelines(line + "\n" for line in lines)

    ref = InputRef(path="(test lines)", kind="raw", fingerprint=canonical_hash(shards))
    return run_stage("crawl-filter", "documents", Imported(), [ref], out, body)


def document_lines(count: int, seed: int) -> list[str]:
    return [json.dumps({"text": text, "id": f"{seed}-{n}", "metadata": {}}) for n, text in
            enumerate(sentences(count, seed=seed))]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# kill -9 and resume


def newest_step(checkpoints, prefix: str) -> int:
    """Step of the newest checkpoint with its complete.json (written last, pretrain and post-training alike),
    0 if none."""
    done = [json.loads((p / "complete.json").read_text())["step"] for p in checkpoints.glob(f"{prefix}*")
            if (p / "complete.json").is_file()]  # fmt: skip
    return max(done, default=0)


def kill_at_checkpoint(command: list, out, ready, log) -> None:
    """Run the command and SIGKILL its whole process group as soon as `ready(OUT.partial/checkpoints)`."""
    checkpoints = out.parent / (out.name + ".partial") / "checkpoints"
    kill_when(command, lambda: checkpoints.is_dir() and ready(checkpoints), log, ENV)
    assert not (out / "artifact.json").exists()  # nothing that looks finished


TRAINING = {
    "pretrain": lambda d, model: ["pretrain", d["tokens"], "--preset", "tiny", "--seq-len", "32", "--batch-tokens", "256",
                                  "--micro-batch-size", "8", "--train-tokens", 256 * STEPS, "--checkpoint-every", EVERY,
                                  "--set", "eval.every=0", "--set", "logging.every=1"],
    "sft": lambda d, model: ["sft", model, d["chat"], "--batch-size", "4", "--max-length", "64", "--max-steps", STEPS,
                             "--set", f"save_steps={EVERY}"],
    "dpo": lambda d, model: ["dpo", model, d["pairs"], "--lora", "--batch-size", "4", "--max-length", "64",
                             "--max-steps", STEPS, "--set", f"save_steps={EVERY}"],
    "grpo": lambda d, model: ["grpo", model, d["prompts"], "--reward", "math:1.0", "--num-generations", "4",
                              "--max-completion-length", "8", "--batch-size", "4", "--max-length", "64",
                              "--max-steps", STEPS, "--set", f"save_steps={EVERY}"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", list(TRAINING))
def test_kill_9_midway_then_the_same_command_resumes(stage, data, tiny_model, tmp_path):
    out = tmp_path / "out"
    command = [*TRAINING[stage](data, tiny_model), "-o", out]
    pretrain = stage == "pretrain"
    prefix = "step-" if pretrain else "checkpoint-"
    kill_at_checkpoint(
        command, out, lambda checkpoints: newest_step(checkpoints, prefix), tmp_path / "killed.log"
    )
    checkpoints = tmp_path / "out.partial" / "checkpoints"
    step = newest_step(checkpoints, prefix)  # the newest complete checkpoint once the process is dead
    assert 0 < step < STEPS

    # and a newer checkpoint the kill cut short while it was being written: never resumed from
    newest = sorted(checkpoints.glob(f"{prefix}*"))[-1]
    cut = checkpoints / (f"step-{step + 1:08d}" if pretrain else f"checkpoint-{step + 1}")
    shutil.copytree(newest, cut)
    (cut / "complete.json").unlink(missing_ok=True)
    for weights in [*cut.glob("*.pt"), *cut.glob("*.safetensors")]:
        weights.write_bytes(weights.read_bytes()[:100])

    resumed = llmforge(*command, env=ENV)
    assert resumed.stdout == f"{out}\n" and "resuming the interrupted run" in resumed.stderr
    artifact = Artifact.open(out)
    assert artifact.stats["resumed_from_step"] == step
    if pretrain:
        assert f"resumed from the checkpoint at step {step}" in resumed.stderr
        logged = sorted({r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r})
    else:
        assert f"resuming from checkpoint-{step} (step {step})" in resumed.stderr
        assert f"discarding checkpoint-{step + 1}: the run was interrupted while writing it" in resumed.stderr
        logged = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]  # each step once
    assert artifact.stats["steps"] == STEPS and logged == list(range(1, STEPS + 1))  # as an uninterrupted run
    assert artifact.verify() == [] and not (tmp_path / "out.partial").exists()
    assert artifact.kind == ("adapter" if stage == "dpo" else "model")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_during_tokenize_encode_keeps_the_finished_chunks(tmp_path, tiny_model):
    from llmforge.stages import tokenize

    docs = documents(tmp_path / "docs", [document_lines(3000, seed=1), document_lines(3000, seed=2)])
    settings = tmp_path / "encode.yaml"
    settings.write_text("workers: 1\nchunk_chars: 300\n")  # ~1,500 small chunks, each one a resume unit
    out = tmp_path / "tokens"
    command = ["tokenize", "encode", docs, "--model", tiny_model, "-o", out, "--config", settings]

    def chunks_done(checkpoints) -> int:
        return sum(1 for _ in checkpoints.glob("encoded-*/*/*.bin"))  # .bin is renamed into place last

    kill_at_checkpoint(
        command, out, lambda checkpoints: chunks_done(checkpoints) >= 3, tmp_path / "killed.log"
    )
    done = chunks_done(tmp_path / "tokens.partial" / "checkpoints")
    resumed = llmforge(*command, env=ENV)
    assert resumed.stdout == f"{out}\n" and "resuming the interrupted run" in resumed.stderr
    artifact = Artifact.open(out)
    assert artifact.stats["encoded_chunks_reused"] == done and f"re-used {done} encoded" in resumed.stderr
    reference = tokenize.encode([str(docs)], tmp_path / "reference", model=tiny_model,
                                config=tokenize.EncodeConfig(workers=1, chunk_chars=300))  # fmt: skip
    # the same shards, byte for byte, as an uninterrupted run
    assert artifact.manifest["files"] == Artifact.open(reference).manifest["files"]
    assert artifact.verify() == []


def test_a_run_killed_between_its_manifest_and_the_rename_is_finished_not_redone(tmp_path):
    """The manifest is written inside OUT.partial, then the directory is renamed to OUT; a kill in between leaves
    a complete artifact in OUT.partial. The same command moves it into place without running the body again."""
    calls = []

    def body(ctx):
        calls.append(ctx.resumed)
        (ctx.work / "payload.txt").write_text("done")

    ref = InputRef(path="(test)", kind="raw", fingerprint=canonical_hash("x"))
    out = run_stage("crawl-filter", "documents", Imported(), [ref], tmp_path / "out", body)
    os.replace(out, tmp_path / "out.partial")  # the state a kill before the rename leaves
    assert run_stage("crawl-filter", "documents", Imported(), [ref], out, body) == out
    assert calls == [False] and Artifact.open(out).verify() == [] and not (tmp_path / "out.partial").exists()


# ---------------------------------------------------------------------------------------------------------------
# Damaged inputs: named, exit 2, one line


def fails(*args) -> str:
    """The single error line of a command that must exit 2 without a traceback."""
    result = llmforge(*args, check=False, env=ENV)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stdout == ""
    return errors[0]


def flip(path, offset: int, replacement: bytes) -> None:
    """Overwrite bytes in place: the file keeps its size, so only a content check can tell."""
    content = bytearray(path.read_bytes())
    content[offset : offset + len(replacement)] = replacement
    path.write_bytes(bytes(content))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_damaged_token_shard_is_named_by_the_stages_that_read_it(data, tiny_model, tmp_path):
    pretrain = ["--preset", "tiny", "--seq-len", "32", "--batch-tokens", "256", "--micro-batch-size", "8"]
    # truncated: its size no longer matches shards.json
    cut = tmp_path / "cut"
    shutil.copytree(data["tokens"], cut)
    shard = cut / "val" / "00000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    expected = f"{shard}: {shard.stat().st_size} bytes, shards.json says {shard.stat().st_size + 10}; the shard is truncated"
    assert expected in fails("pretrain", cut, "-o", tmp_path / "a", *pretrain)  # before any training
    assert expected in fails("eval", tiny_model, "--perplexity", cut, "-o", tmp_path / "b")

    # bytes flipped, size kept: a token id beyond the vocabulary
    flipped = tmp_path / "flipped"
    shutil.copytree(data["tokens"], flipped)
    shard = flipped / "val" / "00000.bin"
    flip(shard, 40, b"\xff\xff")
    expected = f"{shard}: token id 65535 >= vocab size 512; corrupt"
    assert expected in fails("pretrain", flipped, "-o", tmp_path / "c", *pretrain)
    assert expected in fails("eval", tiny_model, "--perplexity", flipped, "-o", tmp_path / "d")
    # ids that stay in the vocabulary only the full check finds: llmforge show --verify re-hashes every file
    verify = llmforge("show", "--verify", flipped, check=False)
    assert verify.returncode == 2 and "val/00000.bin: sha256 differs from the manifest" in verify.stderr
    assert not any((tmp_path / name).exists() or (tmp_path / f"{name}.partial").exists() for name in "abcd")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_damaged_document_shard_is_named_by_the_stages_that_read_it(tmp_path, tiny_model):
    from llmforge.data.documents import count_documents, iter_documents
    from llmforge.errors import InputError

    good = documents(tmp_path / "good", [document_lines(120, seed=1), document_lines(120, seed=2)])

    def damaged(name, change):
        copy = tmp_path / name
        shutil.copytree(good, copy)
        change(copy / "data" / "00001.jsonl.gz")
        return copy, copy / "data" / "00001.jsonl.gz"

    def encode(artifact, n) -> str:
        return fails("tokenize", "encode", artifact, "--model", tiny_model, "-o", tmp_path / f"t{n}")

    def dedup(artifact, n) -> str:  # datatrove reads the shards, in a pool of two worker processes
        return fails("dedup", artifact, "--workers", "2", "-o", tmp_path / f"d{n}")

    # cut short: the size check against the manifest names it before any work
    cut, shard = damaged("cut", lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]))
    for line in (encode(cut, 1), dedup(cut, 1)):
        assert f"{shard}: {shard.stat().st_size:,} bytes, artifact.json says" in line, line

    # bytes flipped in the compressed stream, size kept: the reader names the file (deflate fails, or what it
    # inflates is not JSON); tokenize's readers in process, datatrove's through dedup
    flipped, shard = damaged("flipped", lambda f: flip(f, f.stat().st_size // 2, b"\x00" * 16))
    for read in (count_documents, lambda artifact: list(iter_documents(artifact))):
        with pytest.raises(InputError, match=rf"^{shard}(:\d+)?: (corrupt or truncated|not valid JSON)"):
            read(Artifact.open(flipped))
    line = dedup(flipped, 2)
    assert line.startswith(f"error: {shard}") and ("corrupt or truncated" in line or "not valid JSON" in line)

    # a broken line in a shard whose manifest agrees (a writer's bug): file and line
    lines = document_lines(30, seed=3)
    lines[6] = lines[6][:-5]
    broken = documents(tmp_path / "broken", [document_lines(30, seed=4), lines])
    for line in (encode(broken, 3), dedup(broken, 3)):
        assert f"{broken / 'data' / '00001.jsonl.gz'}:7: not valid JSON" in line, line


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_damaged_model_weights_are_named_by_every_stage_that_loads_them(damage, data, tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        flip(weights, 20, b"#" * 8)  # inside the JSON header
    expected = f"{weights}: the weights cannot be read, the file is truncated or corrupt"
    for command in (["sft", model, data["chat"], "-o", tmp_path / "sft"],
                    ["eval", model, "-o", tmp_path / "eval"],
                    ["quantize", model, "--data", data["tokens"], "-o", tmp_path / "quantized"],
                    ["serve", model, "--port", "0"]):  # fmt: skip
        assert expected in fails(*command), command


# ---------------------------------------------------------------------------------------------------------------
# Non-finite numbers: in the settings, and in training


def float_settings(model: type[BaseModel], prefix: str = ""):
    """(dotted key, type) of every setting that holds floating-point numbers, nested sections included."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from float_settings(field.annotation, f"{prefix}{name}.")
        elif holds_floats(field.annotation):
            yield f"{prefix}{name}", field.annotation


def holds_floats(annotation) -> bool:
    return annotation is float or any(holds_floats(a) for a in typing.get_args(annotation))


def as_yaml(annotation, number: str) -> str:
    """`number` shaped as the setting's value: itself, or inside the mapping or sequence the setting holds."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return f"{{x: {number}}}"
    if origin in (list, tuple):
        return "[" + ", ".join([number] * max(1, len(typing.get_args(annotation)))) + "]"
    return number


WITHOUT_FLOAT_SETTINGS = {"import", "quality annotate"}


def test_stages_without_float_settings_are_only_those_named():
    """Keeps the test below from passing vacuously for a stage whose float settings it failed to find."""
    assert {
        s.name for s in registry.STAGES if not list(float_settings(stage_function(s.name).config_model))
    } == (WITHOUT_FLOAT_SETTINGS)


@pytest.mark.parametrize("name", [s.name for s in registry.STAGES if s.name not in WITHOUT_FLOAT_SETTINGS])
def test_every_float_setting_refuses_inf_and_nan_naming_its_key(name):
    """Through the command line's own parsing (flags and --set), every stage: exit 2 (InputError) and the key."""
    command = stage_function(name)
    settings = list(float_settings(command.config_model))
    for key, annotation in settings:
        for number in (".inf", "-.inf", ".nan", "inf", "nan", "1e999"):
            with pytest.raises(InputError, match=rf"^config {re.escape(key)}\b"):
                parse(name, ["--set", f"{key}={as_yaml(annotation, number)}"])
    for flag in command.flags:
        if flag.key in dict(settings) and typing.get_origin(dict(settings)[flag.key]) is None:
            with pytest.raises(
                InputError, match=rf"^config {re.escape(flag.key)}: Input should be a finite number"
            ):
                parse(name, [flag.names[0], "inf"])


def test_sft_with_an_infinite_learning_rate_is_refused_and_one_that_overflows_stops(
    data, tiny_model, tmp_path
):
    """Issue 16: `llmforge sft ... --set learning_rate=inf` exited 0 with `loss 0.0` logged and every weight NaN."""
    out = tmp_path / "sft"
    command = ["sft", tiny_model, data["chat"], "-o", out, "--batch-size", "4", "--max-length", "64",
               "--max-steps", "4", "--set", "save_steps=1", "--set", "warmup_ratio=0"]  # fmt: skip
    assert (
        fails(*command, "--set", "learning_rate=inf")
        == "error: config learning_rate: Input should be a finite number"
    )
    assert not (tmp_path / "sft.partial").exists()

    result = llmforge(*command, "--lr", "1e30", check=False, env=ENV)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr[
        -3000:
    ]
    assert len(errors) == 1 and errors[0].startswith("error: sft diverged at step 2: "), errors
    assert "checkpoint-1 (step 1)" in errors[0] and "Lower the learning rate (now 1e+30)" in errors[0]
    checkpoints = tmp_path / "sft.partial" / "checkpoints"
    assert not out.exists() and (checkpoints / "checkpoint-1" / "complete.json").is_file()
    assert not (checkpoints / "checkpoint-2").exists()


def test_grpo_refuses_a_reward_weight_that_is_not_finite(data, tiny_model, tmp_path):
    line = fails("grpo", tiny_model, data["prompts"], "-o", tmp_path / "grpo", "--reward", "math:1e999")
    assert line == "error: --reward 'math:1e999': the weight must be a finite number"


# ---------------------------------------------------------------------------------------------------------------
# Two writers, one output: the second is refused while the first lives; --force discards partial work


def started(command: list, ready) -> subprocess.Popen:
    """`llmforge COMMAND` in a process group of its own, frozen (SIGSTOP) as soon as `ready()`: a run caught
    midway that still holds everything it took."""
    process = subprocess.Popen([sys.executable, "-m", "llmforge", *map(str, command)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli_env(ENV), start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGSTOP)
    return process


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_run_into_the_same_output_is_refused_while_the_first_writes(tmp_path):
    """The issue's reproduction: `dedup docs -o ff &` then `dedup docs -o ff --threshold 0.7 --force` published an
    artifact without data/. Now the second run stops at once naming the first, which finishes intact."""
    docs = documents(tmp_path / "docs", [document_lines(150, seed=1), document_lines(150, seed=2)[:100]
                                         + document_lines(150, seed=1)[:50]])  # fmt: skip
    ff = tmp_path / "ff"
    first = ["dedup", docs, "-o", ff, "--workers", "1"]
    writer = started(first, lambda: (tmp_path / "ff.partial" / "staging.json").is_file())
    try:
        holder = f"another run is writing this output (pid {writer.pid} on {socket.gethostname()}, started 20"
        for second in ([*first[:4], "--threshold", "0.7", "--force"], first):
            line = fails(*second)
            assert (
                line.startswith(f"error: {ff}: {holder}")
                and f": llmforge {shlex.join(map(str, first))})" in line
            )
        assert (tmp_path / "ff.partial" / "staging.json").is_file()  # the partial work was left alone
    finally:
        os.killpg(writer.pid, signal.SIGCONT)
    _, stderr = writer.communicate(timeout=300)
    assert writer.returncode == 0, stderr[-3000:]
    artifact = Artifact.open(ff)
    assert artifact.verify() == [] and artifact.stats["documents"] == 250
    assert sum(1 for _ in iter_documents(artifact)) == 250 and not (tmp_path / "ff.lock").exists()

    # killed midway, the run's lock goes with it; --force then discards its partial work instead of resuming it
    again = tmp_path / "again"
    command = ["dedup", docs, "-o", again, "--workers", "1"]
    buckets = tmp_path / "again.partial" / "logs" / "minhash-buckets" / "completions"
    kill_when(command, lambda: buckets.is_dir() and any(buckets.iterdir()), tmp_path / "kill.log", ENV)
    # datatrove skips every task it finds marked complete: marks of another run are never joined
    mark = tmp_path / "again.partial" / "logs" / "minhash-buckets" / "llmforge-run.json"
    mark.write_text(json.dumps({"fingerprint": "f" * 64}))
    assert fails(*command) == (f"error: {mark.parent} holds datatrove work of another run (fingerprint ffffffffffff), "
                               "which this run must not join; run again with --force to discard the partial work")  # fmt: skip
    forced = llmforge(*command, "--force", env=ENV)
    assert "discarding the partial work" in forced.stderr and "resuming" not in forced.stderr
    # the same fingerprint, the same bytes: gzip headers carry no time
    assert Artifact.open(again).manifest["files"] == artifact.manifest["files"]


# ---------------------------------------------------------------------------------------------------------------
# Outputs against inputs; the payload is what the manifest lists


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_output_that_would_overwrite_or_sit_inside_an_input_is_refused(tmp_path):
    docs = documents(tmp_path / "docs", [document_lines(40, seed=1)])
    (tmp_path / "link").symlink_to(docs)
    corpus = write_jsonl(tmp_path / "corpus" / "part.jsonl", [{"text": t} for t in sentences(30)]).parent
    refused = {
        ("dedup", docs, "-o", docs, "--force"): f"{docs}: the output is also an input ({docs})",
        ("dedup", tmp_path / "link", "-o", docs, "--force"): f"{docs}: the output is also an input ({tmp_path / 'link'})",
        ("dedup", docs, "-o", docs / "data" / "inner"): f"{docs / 'data' / 'inner'}: the output lies inside the input {docs}",
        ("crawl-filter", corpus, "-o", corpus / "out"): f"{corpus / 'out'}: the output lies inside the input {corpus}",
    }  # fmt: skip
    for command, message in refused.items():
        assert fails(*command) == f"error: {message}; write it elsewhere"
    assert Artifact.open(docs).verify() == [] and sorted(p.name for p in corpus.iterdir()) == ["part.jsonl"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_document_stages_read_only_the_shards_the_manifest_lists(tmp_path):
    from llmforge.data.documents import count_documents

    docs = documents(tmp_path / "docs", [document_lines(40, seed=1), document_lines(40, seed=2)])
    outside = tmp_path / "outside.jsonl.gz"
    with gzip.open(outside, "wt") as handle:
        handle.writelines(line + "\n" for line in document_lines(25, seed=3))
    shutil.copy(outside, docs / "data" / "00002.jsonl.gz")  # a shard added after the manifest
    (docs / "data" / "00003.jsonl.gz").symlink_to(outside)  # and a link to a file outside
    artifact = Artifact.open(docs)
    assert count_documents(artifact) == 80 and len(list(iter_documents(artifact))) == 80
    llmforge("dedup", docs, "-o", tmp_path / "deduped", "--workers", "1", env=ENV)
    assert Artifact.open(tmp_path / "deduped").stats["input"]["documents"] == 80
    verify = llmforge("show", "--verify", docs, check=False)
    assert verify.returncode == 2
    assert "data/00002.jsonl.gz: not listed in the manifest" in verify.stderr
    assert f"data/00003.jsonl.gz: a symbolic link (to {outside}), not listed in the manifest" in verify.stderr
    # a listed shard swapped for a link: refused before reading
    shard = docs / "data" / "00001.jsonl.gz"
    shard.unlink()
    shard.symlink_to(outside)
    assert fails("dedup", docs, "-o", tmp_path / "d2").startswith(
        f"error: {shard}: a symbolic link, not the file"
    )


# ---------------------------------------------------------------------------------------------------------------
# Small lies: every bad input named, exit 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_invalid_utf8_in_a_dataset_names_its_line(data, tiny_model, tmp_path):
    lines = (data["chat"].read_bytes().splitlines(keepends=True) * 10)[:200]  # past one decoding block
    lines[170] = lines[170].replace(b"Answer", b"Answ\xff\xfer", 1)
    bad = tmp_path / "chat.jsonl"
    bad.write_bytes(b"".join(lines))
    line = fails("sft", tiny_model, bad, "-o", tmp_path / "sft", "--dry-run")
    assert line.startswith(f"error: {bad}:171: not valid UTF-8 (byte ")
    pairs = data["pairs"].read_bytes().splitlines(keepends=True)
    pairs[4] = pairs[4].replace(b"Repeat", b"Rep\xc3eat", 1)
    gz = tmp_path / "pairs.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(pairs)))
    line = fails("dpo", tiny_model, gz, "-o", tmp_path / "dpo", "--dry-run")
    assert line.startswith(f"error: {gz}:5: not valid UTF-8 (byte ")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_model_directory_without_its_config_is_named(data, tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "config.json").unlink()
    expected = f"error: {model}: not a Hugging Face model directory (no config.json)"
    for command in (["quantize", model, "--data", data["tokens"], "-o", tmp_path / "quantized"],
                    ["serve", model, "--port", "0"],
                    ["sft", model, data["chat"], "-o", tmp_path / "sft", "--dry-run"]):  # fmt: skip
        assert fails(*command) == expected, command
    (model / "config.json").write_text('{"hidden_size": 64}')
    assert fails("serve", model, "--port", "0") == (f"error: {model / 'config.json'}: no 'model_type' in the model's "
                                                    "configuration; it is not a transformers model config")  # fmt: skip


def test_a_diverged_run_under_the_launcher_reports_its_own_error(data, tiny_model, tmp_path):
    """Two processes (torchrun) reach the same verdict; the user's process says why, not just that workers failed."""
    result = llmforge("sft", tiny_model, data["chat"], "-o", tmp_path / "sft", "--nproc", "2", "--batch-size", "2",
                      "--max-length", "64", "--max-steps", "4", "--lr", "1e30", "--set", "save_steps=1",
                      "--set", "warmup_ratio=0", check=False, env=ENV)  # fmt: skip
    assert result.returncode == 1 and result.stdout == "", result.stderr[-3000:]
    last = [line for line in result.stderr.splitlines() if line.startswith("error:")][-1]
    assert last.startswith("error: sft diverged at step 2: ") and "checkpoint-1 (step 1)" in last, last
    assert "training processes failed" not in result.stderr
    assert not (tmp_path / "sft").exists()
