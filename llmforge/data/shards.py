"""The tokens artifact: flat binary token shards that training memory-maps.

    OUT/tokenizer/                 the tokenizer the shards were encoded with (travels with the tokens)
    OUT/train/00000.bin            tokens, little-endian uint16 (vocab <= 65,536) or uint32; each document
                                   is followed by EOS
    OUT/train/00000.idx            uint64 end offset (exclusive) of every document in the shard, so training can
                                   mask attention across document boundaries
    OUT/val/...                    the held-out split, same layout
    OUT/shards.json                dtype, vocab size, special ids and the list of shards with their counts

`.bin` and `.idx` are plain arrays (numpy `tofile`), readable from any language.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmforge.errors import InputError
from llmforge.files import replacing

INDEX = "shards.json"
FORMAT = "llmforge.tokens/1"


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


class ShardWriter:
    """Appends documents to `<split>/NNNNN.bin` shards of about `shard_tokens` tokens each."""

    def __init__(self, root: Path, split: str, dtype: str, eos_id: int, shard_tokens: int = 100_000_000,
                 first_shard: int = 0):  # fmt: skip
        self.root, self.split, self.dtype, self.eos_id = Path(root), split, np.dtype(dtype), eos_id
        self.shard_tokens = shard_tokens
        self.number = first_shard
        self.shards: list[dict[str, Any]] = []
        self._tokens: list[np.ndarray] = []
        self._ends: list[int] = []
        self._count = 0
        (self.root / split).mkdir(parents=True, exist_ok=True)

    def add(self, ids: list[int] | np.ndarray) -> None:
        array = np.asarray(ids, dtype=self.dtype)
        self._tokens.append(array)
        self._tokens.append(np.asarray([self.eos_id], dtype=self.dtype))
        self._count += len(array) + 1
        self._ends.append(self._count)
        if self._count >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._ends:
            return
        name = f"{self.split}/{self.number:05d}"
        tokens = np.concatenate(self._tokens)
        with replacing(self.root / f"{name}.idx") as tmp:
            np.asarray(self._ends, dtype=np.uint64).tofile(tmp)
        with replacing(self.root / f"{name}.bin") as tmp:
            tokens.tofile(tmp)
        self.shards.append({"file": f"{name}.bin", "tokens": int(len(tokens)), "documents": len(self._ends)})
        self.number += 1
        self._tokens, self._ends, self._count = [], [], 0

    def close(self) -> list[dict[str, Any]]:
        self.flush()
        return self.shards


def write_index(root: Path, dtype: str, vocab_size: int, special_ids: dict[str, int],
                splits: dict[str, list[dict[str, Any]]], **extra: Any) -> dict[str, Any]:  # fmt: skip
    index = {
        "format": FORMAT,
        "dtype": dtype,
        "vocab_size": vocab_size,
        "special_ids": special_ids,
        "splits": {
            name: {
                "tokens": sum(s["tokens"] for s in shards),
                "documents": sum(s["documents"] for s in shards),
                "shards": shards,
            }
            for name, shards in splits.items()
        },
        **extra,
    }
    (Path(root) / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


@dataclass
class Shard:
    path: Path
    tokens: np.ndarray  # memory-mapped
    ends: np.ndarray  # document end offsets

    def __len__(self) -> int:
        return len(self.tokens)


class TokenShards:
    """Read access to a tokens artifact directory; every problem names the file."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index_path = self.root / INDEX
        try:
            self.index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise InputError(f"{index_path}: missing; is {self.root} a tokens artifact?") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{index_path}: not valid JSON ({exc.msg})") from None
        if self.index.get("format") != FORMAT:
            raise InputError(f"{index_path}: format {self.index.get('format')!r} is not {FORMAT}")
        self.dtype = np.dtype(self.index["dtype"])
        self.vocab_size: int = self.index["vocab_size"]
        self.special_ids: dict[str, int] = self.index.get("special_ids", {})

    @property
    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer"

    def split_names(self) -> list[str]:
        return list(self.index["splits"])

    def num_tokens(self, split: str = "train") -> int:
        return self.index["splits"][split]["tokens"] if split in self.index["splits"] else 0

    def shards(self, split: str = "train", check_ids: bool = False) -> list[Shard]:
        """Memory-map a split's shards. Sizes are always checked; `check_ids` also scans for ids >= vocab."""
        if split not in self.index["splits"]:
            raise InputError(f"{self.root}: no '{split}' split (has {', '.join(self.split_names())})")
        loaded = []
        for entry in self.index["splits"][split]["shards"]:
            bin_path = self.root / entry["file"]
            idx_path = bin_path.with_suffix(".idx")
            for path, expected in ((bin_path, entry["tokens"] * self.dtype.itemsize),
                                   (idx_path, entry["documents"] * 8)):  # fmt: skip
                if not path.is_file():
                    raise InputError(f"{path}: shard file missing")
                size = path.stat().st_size
                if size != expected:
                    raise InputError(
                        f"{path}: {size} bytes, {INDEX} says {expected}; the shard is truncated or corrupt"
                    )
            tokens = np.memmap(bin_path, dtype=self.dtype, mode="r")
            ends = np.fromfile(idx_path, dtype=np.uint64)
            if len(ends) and (int(ends[-1]) != len(tokens) or np.any(np.diff(ends.astype(np.int64)) <= 0)):
                raise InputError(
                    f"{idx_path}: document offsets do not match {bin_path.name}; the shard is corrupt"
                )
            if check_ids and len(tokens) and int(tokens.max()) >= self.vocab_size:
                raise InputError(
                    f"{bin_path}: token id {int(tokens.max())} >= vocab size {self.vocab_size}; corrupt"
                )
            loaded.append(Shard(path=bin_path, tokens=tokens, ends=ends))
        return loaded

    def documents(self, split: str = "train"):
        """Yield each document's token ids (EOS included), shard by shard; ids are range-checked as they are read
        (a flipped byte in a .bin of the right size otherwise decodes silently to other text)."""
        for shard in self.shards(split):
            start = 0
            for number, end in enumerate(shard.ends):
                ids = np.asarray(shard.tokens[start : int(end)])
                if len(ids) and int(ids.max()) >= self.vocab_size:
                    raise InputError(f"{shard.path}: token id {int(ids.max())} >= vocab size {self.vocab_size} in "
                                     f"document {number} (tokens {start}-{int(end)}); the shard is corrupt")  # fmt: skip
                yield ids
                start = int(end)
