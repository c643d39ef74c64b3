"""File writing every stage shares: atomic replacement (a reader, or a run killed mid-write, never leaves half a
file under the real name) and JSON lines for llmforge's own files (user data is read through `errors.json_lines`,
which names the bad line)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; when the block ends without error, one rename puts it in place."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, value: Any, **dump_options: Any) -> None:
    """Indented JSON, written atomically. `dump_options` go to json.dumps (default=float for numpy numbers...)."""
    dump_options.setdefault("indent", 2)
    write_text(path, json.dumps(value, **dump_options) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=float) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file llmforge wrote itself (blank lines skipped); [] when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_dir(kind: str) -> Path:
    """Where llmforge keeps what it computes once per input (n-gram indexes, rebuilt tokenizers):
    $LLMFORGE_CACHE/<kind>, by default ~/.cache/llmforge/<kind> (or $XDG_CACHE_HOME/llmforge/<kind>)."""
    if os.environ.get("LLMFORGE_CACHE"):
        return Path(os.environ["LLMFORGE_CACHE"]) / kind
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmforge" / kind


# files smaller than this are hashed every time: remembering them saves nothing
REMEMBER_HASHES_FROM = 64 * 2**20
# a file written this recently is not remembered: a second write within the filesystem's timestamp granularity
# could leave the same times behind ("racy git")
SETTLED_NS = 2 * 10**9


def model_file_sha256(path: Path) -> str:
    """sha256_file of a model file a stage fingerprints at every start (a plain HF directory's weights, a .gguf
    file): remembered in $LLMFORGE_CACHE/sha256 under the file's path, size, inode and modification and change
    times, since hashing 15 GB takes 20 s. Any write to the file changes its change time, so a changed file is
    hashed again; a file written in the last two seconds is not remembered."""
    path = Path(path)
    stat = path.stat()
    if stat.st_size < REMEMBER_HASHES_FROM:
        return sha256_file(path)
    key = canonical_hash([str(path.resolve()), stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns])
    entry = cache_dir("sha256") / key[:32]
    with contextlib.suppress(OSError):
        remembered = entry.read_text().strip()
        if len(remembered) == 64:
            return remembered
    digest = sha256_file(path)
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) < SETTLED_NS:
        return digest
    with contextlib.suppress(OSError):  # a cache that cannot be written: hashed again next time
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_text(entry, digest)
    return digest


def canonical_hash(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def publish_directory(staging: Path, final: Path) -> None:
    """Move a finished build into a cache in one rename. Where another process got there first, theirs stays."""
    try:
        os.rename(staging, final)
    except OSError:
        if not final.exists():
            raise
        discard_directory(staging)


def discard_directory(path: Path) -> None:
    """Rename aside first, so no reader ever sees a half-deleted directory under its name."""
    aside = path.with_name(f"{path.name}.discarded-{os.getpid()}-{time.monotonic_ns()}")
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)
