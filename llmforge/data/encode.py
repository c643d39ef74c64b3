"""The encoding engine of `llmforge tokenize encode`: documents -> token ids in parallel -> mixed token shards.

Two passes:
- `encode_sources`: each documents artifact is cut into chunks of about `chunk_chars` characters; workers
  encode the chunks (`make_encoder`: ids exactly as `tokenizer(text)["input_ids"]`, from tiktoken in threads
  where the stage chose it, data/tiktoken_bpe.py, else `tokenizers` encode_batch in processes) into chunk files
  under the run's checkpoints, in the shard layout of data/shards.py (`NNNNN.bin` + `.idx`, EOS after each
  document). A chunk file is renamed into place last, so an interrupted run keeps every finished chunk and encodes
  only the rest. tiktoken releases the GIL, so threads share its one encoder and need no texts sent to other
  processes: on 2 busy cores they encoded 1.5x as fast as the same encoder in 2 worker processes (bench/RESULTS.md).
- `mix`: holds out each source's validation documents, draws the training documents by weight
  (data/mixture.py: repeated or subsampled), shuffles them across sources and writes `train/` and `val/` shards,
  rewriting a share of the training documents into fill-in-the-middle order where asked (data/fim.py).

Why our own pool rather than datatrove's `DocumentTokenizer` under the data stages' executors: its files have the
same layout as ours (uint16/uint32 tokens, a uint64 index of document ends; the bench checks its ids equal ours),
and on the same 2 busy cores it encoded at about the same rate (bench/bench_tokenize.py, bench/RESULTS.md). But a
datatrove task is a whole input file: an artifact written as one file encodes in one task and resumes all or
nothing, where a chunk here is a few MB; its `eos_token` replaces the tokenizer's post-processor (a tokenizer that
adds BOS would lose it); it writes in place rather than by rename; and the validation split and the mix by weight
would still be ours.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmforge import machine

if TYPE_CHECKING:
    from llmforge.artifacts import Artifact

# Beyond about 4 passes, repeated data is worth much less than fresh data (Muennighoff et al. 2023).
USEFUL_PASSES = 4

EncodeBatch = Callable[[list[str]], Sequence[list[int] | np.ndarray]]


# ---------------------------------------------------------------------------------------------------------------
# Encoding: documents -> per-source chunks of tokens (the resume unit)


def tokenizers_backend(tokenizer_json: str, control_tokens: bool = True):
    """The `tokenizers` Tokenizer of a serialized backend; without `control_tokens`, special-token strings in the
    text (`<|im_start|>`, the EOS string) are encoded as the text they are (tag tokens such as <think> are still
    matched: they are not marked special)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.encode_special_tokens = not control_tokens
    return tokenizer


def make_encoder(
    tokenizer_json: str, encoder: str = "tokenizers", control_tokens: bool = True
) -> EncodeBatch:
    """The one step that turns a batch of texts into token ids, built once per worker from the serialized
    `tokenizers` backend (configured as transformers configures it, so the ids are those of
    `tokenizer(text)["input_ids"]`, or with `control_tokens` off those of `split_special_tokens=True`).
    "tiktoken": the same ids from tiktoken (data/tiktoken_bpe.py), for a tokenizer it maps onto exactly."""
    if encoder == "tiktoken":
        from llmforge.data.tiktoken_bpe import make_tiktoken_encoder

        return make_tiktoken_encoder(tokenizer_json, control_tokens)
    tokenizer = tokenizers_backend(tokenizer_json, control_tokens)

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in tokenizer.encode_batch(texts)]

    return encode_batch


_WORKER_ENCODE: EncodeBatch | None = None


def _start_worker(tokenizer_json: str, encoder: str, threads: bool, control_tokens: bool) -> None:
    global _WORKER_ENCODE
    if not threads:  # one process per core already; a thread pool inside each would only compete
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_ENCODE = make_encoder(tokenizer_json, encoder, control_tokens)


def encode_chunk(texts: list[str], directory: Path, number: int, dtype: str, eos_id: int) -> tuple[int, int]:
    """Encode one chunk of documents into `directory/NNNNN.bin` + `.idx` (EOS after each document); returns
    (documents, tokens)."""
    from llmforge.data.shards import ShardWriter

    writer = ShardWriter(
        directory.parent, directory.name, dtype, eos_id, shard_tokens=2**62, first_shard=number
    )
    for ids in _WORKER_ENCODE(texts):
        writer.add(ids)
    shards = writer.close()
    return len(texts), shards[0]["tokens"]


def chunk_ends(path: Path) -> np.ndarray:
    """The document end offsets of a chunk (or shard) file."""
    return np.fromfile(path.with_suffix(".idx"), dtype=np.uint64)


def _chunks(texts: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chunk_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class Encoded:
    """What `encode_sources` left on disk: each source's chunk files in document order."""

    files: list[list[Path]]
    reused: int  # chunks an interrupted run had finished

    @property
    def tokens(self) -> int:
        return sum(int(chunk_ends(path)[-1]) for files in self.files for path in files)


def encode_sources(artifacts: list[Artifact], tokenizer_json: str, dtype: str, eos_id: int, cache: Path,
                   workers: int = 0, chunk_chars: int = 2_000_000, encoder: str = "tokenizers",
                   threads: bool | None = None, control_tokens: bool = True) -> Encoded:  # fmt: skip
    """Encode every documents artifact into chunk files under `cache`, in parallel (`workers` processes, or
    threads, 0 = one per core); chunks already there are kept. `threads` (default: for tiktoken only, which
    releases the GIL) encodes in threads of this process rather than worker processes. `control_tokens`: match
    special-token strings in the text as the special tokens (else they are encoded as text)."""
    from llmforge.console import progress
    from llmforge.data.documents import count_documents, iter_texts

    workers = workers or machine.cpu_count()
    threads = encoder == "tiktoken" if threads is None else threads
    pool = None
    if workers > 1 and threads:
        _start_worker(tokenizer_json, encoder, True, control_tokens)
        pool = ThreadPoolExecutor(workers)
    elif workers > 1:  # spawn: safe with the tokenizers thread pool, and the same on every platform
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker,
                                   initargs=(tokenizer_json, encoder, False, control_tokens))  # fmt: skip
    else:
        _start_worker(tokenizer_json, encoder, True, control_tokens)
    encoded = Encoded(files=[], reused=0)
    pending: set = set()
    try:
        with progress() as bar:
            task = bar.add_task("encoding", total=sum(count_documents(a) for a in artifacts), unit="docs")

            def finished(futures) -> None:
                for future in futures:
                    bar.advance(task, future.result()[0])

            for number, artifact in enumerate(artifacts):
                directory = cache / f"{number:03d}-{artifact.fingerprint[:16]}"
                directory.mkdir(parents=True, exist_ok=True)
                files = []
                for chunk_number, texts in enumerate(_chunks(iter_texts(artifact), chunk_chars)):
                    path = directory / f"{chunk_number:05d}.bin"
                    files.append(path)
                    if path.is_file():  # written last, by rename: the chunk is complete
                        encoded.reused += 1
                        bar.advance(task, len(texts))
                        continue
                    args = (texts, directory, chunk_number, dtype, eos_id)
                    if pool is None:
                        bar.advance(task, encode_chunk(*args)[0])
                        continue
                    pending.add(pool.submit(encode_chunk, *args))
                    if len(pending) >= 2 * workers:  # keep memory bounded: read ahead only a little
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        finished(done)
                encoded.files.append(files)
            finished(wait(pending).done)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return encoded


# ---------------------------------------------------------------------------------------------------------------
# Mixing: chunks -> shuffled train shards by weight, plus the held-out validation split


def mix(root: Path, names: list[str], chunks: list[list[Path]], dtype: str, eos_id: int, *,
        weights: dict[str, float], target_tokens: int | None, val_fraction: float, shard_tokens: int,
        seed: int, fim: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        ) -> tuple[dict[str, list[dict]], dict[str, dict]]:  # fmt: skip
    """Write `root/train` (mixed by weight, documents shuffled) and `root/val` from each source's chunks (`names`
    and `chunks` in the same order); returns the shard lists and what each source contributed (tokens as
    encoded). `fim` rewrites training documents (each copy drawn on its own, from a generator of its own, so the
    split and the mix are those of the same run without it)."""
    from llmforge.console import progress, warn
    from llmforge.data.mixture import budgets, draw, hold_out
    from llmforge.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    maps, chunk_of, starts, lengths, owner = [], [], [], [], []
    for number, files in enumerate(chunks):
        for path in files:
            ends = chunk_ends(path).astype(np.int64)
            chunk_of.append(np.full(len(ends), len(maps)))
            starts.append(ends - np.diff(ends, prepend=0))
            lengths.append(np.diff(ends, prepend=0))
            owner.append(np.full(len(ends), number))
            maps.append(np.memmap(path, dtype=dtype, mode="r"))
    chunk_of, starts, lengths, owner = (np.concatenate(a) for a in (chunk_of, starts, lengths, owner))

    is_val = np.zeros(len(lengths), dtype=bool)
    natural = {}
    for number, name in enumerate(names):
        mine = np.flatnonzero(owner == number)
        is_val[mine] = hold_out(lengths[mine], val_fraction, rng)
        natural[name] = int(lengths[mine][~is_val[mine]].sum())
    target = budgets(natural, weights, target_tokens)
    available = sum(natural.values())
    if target_tokens and target_tokens > available:
        # Asked for, so done; but pretrain repeats the data in epochs without copies on disk.
        warn(f"target_tokens {target_tokens:,} is {target_tokens / max(available, 1):.1f} times the "
             f"{available:,} training tokens the inputs hold: the shards store the data that many times over. "
             "To train on more tokens than the data holds, leave target_tokens unset (weights alone set the mix) "
             "and set pretrain's train_tokens: it repeats the data in epochs")  # fmt: skip
    counts = np.zeros(len(lengths), dtype=np.int64)
    for number, name in enumerate(names):
        train_docs = np.flatnonzero((owner == number) & ~is_val)
        counts[train_docs] = draw(lengths[train_docs], target[name], rng)

    mixed = {}
    total = int((counts * lengths).sum())
    for number, name in enumerate(names):
        mine = owner == number
        tokens = int((counts[mine] * lengths[mine]).sum())
        passes = tokens / max(natural[name], 1)
        mixed[name] = {
            "weight": round(target[name] / max(sum(target.values()), 1), 6),
            "tokens": tokens,
            "share": round(tokens / max(total, 1), 6),
            "natural_tokens": natural[name],
            "passes": round(passes, 4),
            "max_repeats": int(counts[mine].max()) if mine.any() else 0,
            "documents": int(counts[mine].sum()),
            "val_tokens": int(lengths[mine & is_val].sum()),
        }
        if passes > USEFUL_PASSES:
            warn(f"{name} is repeated {passes:.1f} times; beyond about {USEFUL_PASSES} passes repeated "
                 "data helps little: lower its weight or the target, or add data")  # fmt: skip

    order = rng.permutation(np.repeat(np.arange(len(lengths)), counts))
    splits = {}
    for split in ("train", "val"):
        shutil.rmtree(root / split, ignore_errors=True)  # left by an interrupted run: rewritten whole
    fim_rng = np.random.default_rng([seed, 1])
    with progress() as bar:
        for split, documents in (("train", order), ("val", np.flatnonzero(is_val))):
            writer = ShardWriter(root, split, dtype, eos_id, shard_tokens=shard_tokens)
            task = bar.add_task(f"writing {split}", total=int(lengths[documents].sum()), unit="tokens")
            for document in documents:
                start = starts[document]
                end = start + lengths[document] - 1  # the chunk's EOS; the writer adds it back
                ids = maps[chunk_of[document]][start:end]
                writer.add(fim(ids, fim_rng) if fim is not None and split == "train" else ids)
                bar.advance(task, int(lengths[document]))
            splits[split] = writer.close()
    return splits, mixed
