"""Compressed input files, told by their names: `.gz` (gzip: C4, Dolma, our documents shards) and `.zst`
(zstandard: The Pile, SlimPajama and RedPajama ship `.jsonl.zst`). Every reader of user files decompresses here, so
damage reads alike everywhere: `DAMAGE` is what a corrupt or truncated file raises."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import zstandard

DAMAGE = (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError)
SUFFIXES = (".gz", ".zst")


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a zstandard stream, frame after frame (pzstd and concatenated files hold several).
    zstandard's own stream reader stops quietly where a truncated file ends; here a stream that ends inside a frame
    raises EOFError, as gzip does."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.decompressor = zstandard.ZstdDecompressor()
        self.frame = self.decompressor.decompressobj()
        self.inside = False  # bytes of the current frame were read and its end was not
        self.pending, self.offset = b"", 0  # decompressed bytes not yet read, from offset on

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.offset == len(self.pending):
            data = self.raw.read(1 << 16)
            if not data:
                if self.inside:
                    raise EOFError("zstandard stream ended before the end of its last frame")
                return 0
            chunks = []
            while data:
                if self.frame.eof:
                    self.frame = self.decompressor.decompressobj()
                chunks.append(self.frame.decompress(data))
                self.inside = not self.frame.eof
                data = self.frame.unused_data if self.frame.eof else b""
            self.pending, self.offset = b"".join(chunks), 0
        size = min(len(buffer), len(self.pending) - self.offset)
        buffer[:size] = memoryview(self.pending)[self.offset : self.offset + size]
        self.offset += size
        return size

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


def decompressing(handle, name: str | Path):
    """A binary stream of `handle`'s (an open binary file, local or fsspec) decompressed bytes, by `name`'s suffix."""
    lower = str(name).lower()
    if lower.endswith(".gz"):
        return gzip.GzipFile(fileobj=handle)
    if lower.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(handle), buffer_size=1 << 16)
    return handle


def open_compressed(path: str | Path, mode: str = "rb"):
    """`path` opened for reading, decompressed by its suffix; mode "rt" decodes UTF-8."""
    stream = (
        gzip.open(path, "rb") if str(path).lower().endswith(".gz") else decompressing(open(path, "rb"), path)
    )
    return io.TextIOWrapper(stream, encoding="utf-8") if "t" in mode else stream
