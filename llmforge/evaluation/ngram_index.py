"""The n-grams of a body of training text, computed once and kept in a cache, so that eval's contamination check
reads them instead of rescanning every training document at every eval.

An index is the sorted unique 64-bit hashes of every word n-gram of a source's texts (`ngram_hashes`, the
normalisation dedup's decontamination uses), in one raw little-endian file that eval memory-maps and looks items
up in with np.searchsorted. It is keyed by what it indexes and how: the content of the source (the sha256 of each
shard of a documents artifact as its manifest records them, or the content fingerprint of the raw files post-training
read), n, keep_numbers, datatrove's version (the normalisation and hash are its code) and this format's version.

    $LLMFORGE_CACHE/contamination/<key>/      (default ~/.cache/llmforge, or $XDG_CACHE_HOME/llmforge)
        hashes.u64     sorted unique n-gram hashes, uint64 little-endian
        index.json     what it indexes, the count, the sha256 of hashes.u64; written last

An index is built in `<key>.building-<pid>/` and renamed into place when complete, and never written to again. It
is trusted only when index.json matches the key and hashes.u64 has the recorded size and sha256; anything else is
set aside and rebuilt. Builders of one key take a file lock (`<key>.lock`), so concurrent evals build it once; the
atomic rename keeps the cache whole even where the lock does not hold (a filesystem without flock).

Building reads the source's files in worker processes (one task per file; a large source is many shards). Each
worker spills sorted runs of at most RUN_HASHES hashes to disk; the runs are merged by a k-way merge that holds
MERGE_BYTES in memory, so memory stays bounded whatever the corpus size. Disk during a build: about 8 bytes per
n-gram for the runs, plus the index (8 bytes per unique n-gram).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmforge.artifacts import canonical_hash, sha256_file
from llmforge.files import cache_dir, discard_directory, publish_directory

FORMAT = "llmforge.ngram-index/1"  # bump when what an index holds changes (text extraction, layout)
HASHES, MANIFEST = "hashes.u64", "index.json"
DTYPE = np.dtype("<u8")
RUN_HASHES = 1 << 24  # n-gram hashes a worker holds before spilling a sorted run (128 MB)
MERGE_BYTES = 256 << 20  # read buffers of the k-way merge, all runs together
FAN_IN = 64  # runs merged at once; more are merged in passes (open files stay few)
POOL_MIN_BYTES = 2 << 20  # smaller sources (on disk) are read in this process: starting workers costs more


@dataclass(frozen=True)
class Source:
    """A body of training text: `name` for the report, `kind` how to read its files ("documents": a documents
    artifact's JSONL shards; "records": JSONL / JSON / Parquet records post-training read), and `identity`, what
    its content is (the cache key is made from it)."""

    name: str
    kind: str
    files: tuple[str, ...]
    identity: Any


def cache_root() -> Path:
    return cache_dir("contamination")


def index_key(source: Source, n: int, keep_numbers: bool) -> dict[str, Any]:
    from importlib.metadata import version

    return {"format": FORMAT, "source": source.identity, "ngram": n, "keep_numbers": keep_numbers,
            "datatrove": version("datatrove")}  # fmt: skip


@contextlib.contextmanager
def training_index(source: Source, n: int, keep_numbers: bool, cache: bool = True,
                   workers: int = 0) -> Iterator[np.ndarray]:  # fmt: skip
    """The sorted unique n-gram hashes of `source` (memory-mapped), from the cache or built into it first. With
    `cache` False, or a cache directory that cannot be written, it is built in a temporary directory instead."""
    from llmforge.console import log, warn

    key = index_key(source, n, keep_numbers)
    index = None
    if cache:
        try:
            index = _cached(cache_root(), key, source, n, keep_numbers, workers)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            warn(f"the contamination index cache {cache_root()} is not writable ({exc.strerror}); building the "
                 "index in a temporary directory for this eval only")  # fmt: skip
    if index is not None:
        yield index
        return
    with tempfile.TemporaryDirectory(prefix="llmforge-ngrams-") as scratch:
        staging = Path(scratch) / "index"
        _build(staging, key, source, n, keep_numbers, workers)
        index, problem = load(staging, key)
        if index is None:
            raise RuntimeError(f"the n-gram index just built in {staging} does not read back: {problem}")
        log(f"n-gram index of {source.name}: {len(index):,} n-grams (not cached)")
        yield index


def _cached(root: Path, key: dict, source: Source, n: int, keep_numbers: bool, workers: int) -> np.ndarray:
    from llmforge.console import log, warn

    digest = canonical_hash(key)
    final = root / digest
    index, _ = load(final, key)
    if index is not None:
        log(f"n-gram index of {source.name}: {len(index):,} n-grams, cached in {final}")
        return index
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{digest}.lock"):
        index, problem = load(final, key)  # another eval may have built it while this one waited
        if index is not None:
            log(f"n-gram index of {source.name}: built by another process into {final}")
            return index
        if final.exists():
            warn(f"{final}: {problem}; not trusted, rebuilding it")
            discard_directory(final)
        for stale in root.glob(f"{digest}.building-*"):  # left by a build that died (we hold the lock)
            discard_directory(stale)
        staging = root / f"{digest}.building-{os.getpid()}"
        try:
            _build(staging, key, source, n, keep_numbers, workers)
        except BaseException:  # bad input, a full disk, Ctrl-C: no half-built index stays behind
            discard_directory(staging)
            raise
        publish_directory(staging, final)
    index, problem = load(final, key)
    if index is None:
        raise RuntimeError(f"{final}: the n-gram index just built does not read back: {problem}")
    log(f"n-gram index of {source.name}: {len(index):,} n-grams, cached in {final}")
    return index


def load(path: Path, key: dict) -> tuple[np.ndarray | None, str]:
    """(the index, "") when `path` holds a complete index of `key` whose hashes match its manifest, else
    (None, what is wrong)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None, f"no {MANIFEST}" if path.exists() else "missing"
    except (OSError, ValueError) as exc:
        return None, f"unreadable {MANIFEST} ({exc})"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None, f"{MANIFEST} describes another index"
    file = path / HASHES
    expected = manifest.get("ngrams", -1) * DTYPE.itemsize
    try:
        size = file.stat().st_size
        if size != expected:
            return None, f"{HASHES} has {size} bytes, {MANIFEST} says {expected}"
        if sha256_file(file) != manifest.get("sha256"):
            return None, f"{HASHES} does not match the sha256 in {MANIFEST}"
    except OSError as exc:
        return None, f"unreadable {HASHES} ({exc.strerror})"
    if not size:
        return np.zeros(0, dtype=DTYPE), ""
    return np.memmap(file, dtype=DTYPE, mode="r"), ""


def contains(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each of `values` (uint64): is it in the sorted `index`? Binary search, so a memory-mapped index is only
    touched where the values fall."""
    if not len(index) or not len(values):
        return np.zeros(len(values), dtype=bool)
    order = np.argsort(values, kind="stable")  # sorted lookups touch the mapped pages in order
    position = np.minimum(np.searchsorted(index, values[order]), len(index) - 1)
    found = np.empty(len(values), dtype=bool)
    found[order] = index[position] == values[order]
    return found


# ---------------------------------------------------------------------------------------------------------------
# Building


def _build(staging: Path, key: dict, source: Source, n: int, keep_numbers: bool, workers: int) -> None:
    """Every n-gram of `source` into `staging` (hashes, then the manifest, last)."""
    from llmforge.console import log, progress

    start = time.perf_counter()
    staging.mkdir(parents=True)
    runs_dir = staging / "runs"
    runs_dir.mkdir()
    size = sum(os.path.getsize(f) for f in source.files if os.path.isfile(f))
    workers = min(workers or _cpus(), len(source.files))
    pooled = workers > 1 and size >= POOL_MIN_BYTES
    processes = workers if pooled else 1
    log(f"building the n-gram index of {source.name} ({len(source.files)} file(s), {size / 1e6:,.1f} MB, "
        f"{processes} process(es)): once per training data and n-gram settings")  # fmt: skip
    jobs = [(source.kind, file, n, keep_numbers, str(runs_dir / f"{number:05d}")) for number, file in
            enumerate(source.files)]  # fmt: skip
    runs, documents = [], 0
    with progress(transient=True) as bar:
        if pooled:
            from concurrent.futures import ProcessPoolExecutor

            task = bar.add_task(f"n-grams of {source.name}", total=len(jobs), unit="files")
            with ProcessPoolExecutor(workers, mp_context=_context()) as pool:
                for file_runs, count in pool.map(_index_file, *zip(*jobs, strict=True)):
                    runs += file_runs
                    documents += count
                    bar.advance(task)
        else:
            task = bar.add_task(f"n-grams of {source.name}", total=None, unit="docs")
            for job in jobs:
                file_runs, count = _index_file(*job, advance=lambda: bar.advance(task))
                runs += file_runs
                documents += count
    count = _merge([Path(r) for r in runs], staging / HASHES, runs_dir)
    shutil.rmtree(runs_dir)
    manifest = {"key": key, "source": source.name, "documents": documents, "ngrams": count,
                "sha256": sha256_file(staging / HASHES), "seconds": round(time.perf_counter() - start, 3)}  # fmt: skip
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")


def _index_file(kind: str, file: str, n: int, keep_numbers: bool, prefix: str, advance=None) -> tuple:
    """One file's n-gram hashes as sorted unique runs `prefix-K.u64` of at most RUN_HASHES each (a worker's
    memory stays bounded); (the runs, documents read)."""
    from llmforge.data.blocks import ngram_hashes

    runs, pending, held, documents = [], [], 0, 0
    for text in _texts(kind, file):
        grams = ngram_hashes(text, n, keep_numbers=keep_numbers)
        documents += 1
        if advance is not None:
            advance()
        if len(grams):
            pending.append(np.unique(grams))
            held += len(pending[-1])
        if held >= RUN_HASHES:
            runs.append(_spill(pending, f"{prefix}-{len(runs)}.u64"))
            pending, held = [], 0
    if pending:
        runs.append(_spill(pending, f"{prefix}-{len(runs)}.u64"))
    return runs, documents


def _texts(kind: str, file: str) -> Iterator[str]:
    if kind == "records":
        from llmforge.data.records import file_rows

        for _, record in file_rows(file):
            yield record_text(record)
        return
    from llmforge.data.documents import read_lines
    from llmforge.errors import InputError, json_lines, where

    for number, record in json_lines(read_lines(Path(file)), file):  # as iter_documents reads a shard
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{where(file, number)}: a document needs a string 'text' field")
        yield record["text"]


def record_text(record: Any) -> str:
    """Every string in a training record (prompt, completion, chosen, rejected, message contents), one per line."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        return "\n".join(record_text(v) for k, v in record.items() if k != "role" and v is not None)
    if isinstance(record, list | tuple):
        return "\n".join(record_text(v) for v in record)
    return ""


def _spill(arrays: list[np.ndarray], path: str) -> str:
    np.unique(np.concatenate(arrays)).astype(DTYPE, copy=False).tofile(path)
    return path


def _merge(runs: list[Path], out: Path, scratch: Path) -> int:
    """Sorted unique runs into one sorted unique file `out`; returns its length. Runs beyond FAN_IN are merged in
    passes."""
    passes = 0
    while len(runs) > FAN_IN:
        groups = [runs[i : i + FAN_IN] for i in range(0, len(runs), FAN_IN)]
        merged = []
        for number, group in enumerate(groups):
            merged.append(scratch / f"pass{passes}-{number}.u64")
            _merge_runs(group, merged[-1])
            for run in group:
                run.unlink()
        runs, passes = merged, passes + 1
    return _merge_runs(runs, out)


def _merge_runs(runs: list[Path], out: Path) -> int:
    """A k-way merge that holds about MERGE_BYTES: take the next block of each run, emit everything up to the
    smallest block end (each run holds a value once, so every copy of those values is in the blocks), repeat."""
    arrays = [np.memmap(run, dtype=DTYPE, mode="r") for run in runs if run.stat().st_size]
    block = max(1, MERGE_BYTES // DTYPE.itemsize // max(len(arrays), 1))
    positions = [0] * len(arrays)
    total = 0
    with open(out, "wb") as handle:
        while live := [i for i, array in enumerate(arrays) if positions[i] < len(array)]:
            blocks = {i: arrays[i][positions[i] : positions[i] + block] for i in live}
            cut = min(b[-1] for b in blocks.values())
            parts = []
            for i, b in blocks.items():
                take = int(np.searchsorted(b, cut, side="right"))
                parts.append(b[:take])
                positions[i] += take
            merged = np.unique(np.concatenate(parts))
            merged.astype(DTYPE, copy=False).tofile(handle)
            total += len(merged)
    return total


# ---------------------------------------------------------------------------------------------------------------
# The cache directory


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (flock: released by the kernel if the holder dies)."""
    import fcntl

    from llmforge.console import log

    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building the n-gram index {path.with_suffix('')}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _context():
    """Worker processes are started fresh (forkserver, else spawn): eval has torch's thread pools running, which a
    fork would copy mid-state."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
