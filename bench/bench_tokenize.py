"""Encoding throughput: `llmforge tokenize encode` against `tokenizers` encode_batch on the same text.

The stage runs twice: as it chooses (tiktoken, checked against `tokenizers` on a sample) and with
`--encoder tokenizers`; its encoding phase alone runs with tiktoken in threads and in worker processes, and with
`tokenizers` in processes. Also trains the tokenizer both ways, runs datatrove's DocumentTokenizer under the data
stages' local executor (one task per documents file; the corpus is written as one file per worker so it can use
them all), and times a bare tiktoken Encoding built from the same merges and regex. The corpus is real text found
on this machine: the Python standard library's sources (code) and the README/licence/docs files of installed
packages (prose), one document per file.

    .venv/bin/python bench/bench_tokenize.py [--mb 40] [--vocab 8192] [--workers 0]

Prints one table; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import site
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from llmforge import machine
from llmforge.artifacts import InputRef, canonical_hash, run_stage
from llmforge.config import StageConfig
from llmforge.stages import tokenize


class BenchCorpus(StageConfig):
    """Files read from this machine, written as a documents artifact."""

    kind: str = "bench"


def collect(roots: list[Path], suffixes: tuple[str, ...], limit: int) -> list[str]:
    texts, size = [], 0
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix not in suffixes or not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                texts.append(text)
                size += len(text.encode())
                if size >= limit:
                    return texts
    return texts


def documents_artifact(out: Path, texts: list[str], files: int = 1) -> Path:
    """The texts in document order, in `files` files of about the same number of documents."""

    def body(ctx):
        (ctx.work / "data").mkdir()
        per_file = -(-len(texts) // files)
        for file in range(files):
            with gzip.open(ctx.work / "data" / f"{file:05d}.jsonl.gz", "wt", compresslevel=1) as handle:
                for number in range(file * per_file, min((file + 1) * per_file, len(texts))):
                    record = {"text": texts[number], "id": str(number), "metadata": {}}
                    handle.write(json.dumps(record) + "\n")

    ref = InputRef(path="(bench texts)", kind="raw", fingerprint=canonical_hash([len(texts), texts[:3]]))
    return run_stage("crawl-filter", "documents", BenchCorpus(), [ref], out, body)


def tiktoken_encoding(tokenizer_json: Path):
    """A bare tiktoken Encoding with our BPE's ranks and split regex (llmforge/data/tiktoken_bpe.py)."""
    from llmforge.data.tiktoken_bpe import plan

    return plan(tokenizer_json.read_text()).encoding()


def datatrove_encode(docs: Path, tokenizer_json: Path, out: Path, workers: int):
    """datatrove's DocumentTokenizer (EOS after each document, no shuffling) under the executor the data stages
    use; returns every token it wrote, files in task order."""
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    from llmforge.data.executors import ExecutorSettings, Step, run_steps
    from llmforge.data.tokenizer import EOS

    files = len(list((docs / "data").glob("*.jsonl.gz")))

    def build():
        return [
            JsonlReader(str(docs / "data"), glob_pattern="*.jsonl.gz"),
            DocumentTokenizer(str(out / "tokens"), str(tokenizer_json), eos_token=EOS, shuffle_documents=False,
                              save_final_metadata=False),
        ]  # fmt: skip

    run_steps(
        [Step("encode", build, files)], ExecutorSettings(workers=workers), out / "logs", "bench", out.name
    )
    shards = sorted((out / "tokens").glob("*.ds"))
    return np.concatenate([np.fromfile(path, dtype=np.uint16) for path in shards])


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=40, help="megabytes of text to encode")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=0, help="0 = every core")
    parser.add_argument("--repeat", type=int, default=3, help="encoding runs per method, best kept")
    args = parser.parse_args()
    cores = machine.cpu_count()
    workers = args.workers or cores
    limit = int(args.mb * 1e6)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    prose = collect([Path(p) for p in site.getsitepackages()], (".md", ".rst", ".txt"), limit // 5)
    code = collect([stdlib], (".py",), limit - sum(len(t.encode()) for t in prose))
    texts = prose + code
    size = sum(len(t.encode()) for t in texts)
    print(f"corpus: {len(texts):,} documents, {size / 1e6:.1f} MB ({len(prose):,} prose, {len(code):,} code); "
          f"{cores} cores, {workers} workers", file=sys.stderr)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = documents_artifact(root / "docs", texts, files=workers)

        # Training: llmforge (two passes over the artifact, sampling, saving) vs the bare trainer on the same texts.
        from llmforge.data.tokenizer import EOS, build_tokenizer

        config = tokenize.TrainConfig(vocab_size=args.vocab, held_out_bytes=0)
        tok, train_llmforge = timed(tokenize.train, [str(docs)], root / "tok", config)
        _, train_plain = timed(build_tokenizer, args.vocab, iter(texts))

        # Encoding, all with the tokenizer the stage wrote; each method runs `repeat` times, interleaved, best kept
        # (other work on the machine only ever slows a run down).
        from tokenizers import Tokenizer

        from llmforge.artifacts import Artifact
        from llmforge.data.encode import encode_sources
        from llmforge.data.shards import TokenShards

        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        plain = Tokenizer.from_file(str(tok / "tokenizer.json"))
        encoding = tiktoken_encoding(tok / "tokenizer.json")
        # special tokens matched in the text, as plain encode_batch and datatrove's tokenizer match them: the same ids
        encode_config = tokenize.EncodeConfig(workers=workers, val_fraction=0, special_tokens="control")
        slow_config = encode_config.model_copy(update={"encoder": "tokenizers"})
        best = {name: [] for name in ("stage", "stage-tokenizers", "threads", "processes", "phase", "datatrove",
                                      "plain", "tiktoken")}  # fmt: skip
        for run in range(args.repeat):
            out, seconds = timed(tokenize.encode, [str(docs)], root / f"tokens-{run}", tokenizer=tok,
                                 config=encode_config)  # fmt: skip
            best["stage"].append(seconds)
            slow, seconds = timed(tokenize.encode, [str(docs)], root / f"slow-{run}", tokenizer=tok,
                                  config=slow_config)  # fmt: skip
            best["stage-tokenizers"].append(seconds)
            for name, encoder, threads in (("threads", "tiktoken", True), ("processes", "tiktoken", False),
                                           ("phase", "tokenizers", False)):  # fmt: skip
                _, seconds = timed(encode_sources, [Artifact.open(docs)], plain.to_str(), "uint16",
                                   plain.token_to_id(EOS), root / f"chunks-{name}-{run}", workers=workers,
                                   chunk_chars=encode_config.chunk_chars, encoder=encoder, threads=threads)  # fmt: skip
                best[name].append(seconds)
            datatrove_ids, seconds = timed(datatrove_encode, docs, tok / "tokenizer.json", root / f"datatrove-{run}",
                                           workers)  # fmt: skip
            best["datatrove"].append(seconds)
            encodings, seconds = timed(plain.encode_batch, texts)
            best["plain"].append(seconds)
            tiktoken_ids, seconds = timed(encoding.encode_ordinary_batch, texts, num_threads=workers)
            best["tiktoken"].append(seconds)
        plain_ids = [e.ids for e in encodings]
        tokens = sum(map(len, plain_ids))
        assert TokenShards(out).num_tokens("train") == tokens + len(texts)  # the same ids, plus one EOS each
        assert Artifact.open(out).stats["encoder"] == "tiktoken"
        assert Artifact.open(out).manifest["files"] == Artifact.open(slow).manifest["files"]  # the same bytes
        with_eos = np.concatenate([np.append(np.asarray(ids, dtype=np.uint16), plain.token_to_id(EOS))
                                   for ids in plain_ids])  # fmt: skip
        assert np.array_equal(datatrove_ids, with_eos)  # the same ids as ours, in document order
        same = sum(a == b for a, b in zip(tiktoken_ids, plain_ids, strict=True)) / len(texts)
        seconds = {name: min(times) for name, times in best.items()}

    rows = [
        (
            "train BPE: llmforge tokenize train",
            size / train_llmforge / 1e6,
            "MB/s",
            train_plain / train_llmforge,
        ),
        ("train BPE: tokenizers BpeTrainer, texts in memory", size / train_plain / 1e6, "MB/s", 1.0),
    ]
    for name, what in (("stage", "llmforge tokenize encode, whole stage (tiktoken, checked on a sample)"),
                       ("stage-tokenizers", "llmforge tokenize encode --encoder tokenizers, whole stage"),
                       ("threads", f"llmforge encoding phase, tiktoken, {workers} threads"),
                       ("processes", f"llmforge encoding phase, tiktoken, {workers} processes"),
                       ("phase", f"llmforge encoding phase, tokenizers, {workers} processes"),
                       ("datatrove", f"datatrove DocumentTokenizer, local executor, {workers} tasks"),
                       ("plain", "tokenizers encode_batch, texts in memory"),
                       ("tiktoken", f"tiktoken from the same merges ({same:.1%} of documents identical)")):  # fmt: skip
        rows.append(
            (f"encode: {what}", tokens / seconds[name] / 1e6, "M tokens/s", seconds["plain"] / seconds[name])
        )
    print(f"\n{'what':<84} {'rate':>8}  {'unit':<11} {'vs tokenizers':>13}")
    for what, rate, unit, ratio in rows:
        print(f"{what:<84} {rate:>8.2f}  {unit:<11} {ratio:>12.2f}x")


if __name__ == "__main__":
    main()
