"""Training windows from token shards: packed, shuffled, addressed by batch number so a run can resume anywhere.

Each shard is cut into non-overlapping windows of `seq_len + 1` tokens (inputs and their next-token targets);
documents are packed back to back, EOS between them. The windows of an epoch are visited in a permutation drawn
from the seed and the epoch, and global batch `b` is the slice `[b * B, (b + 1) * B)` of that endless sequence,
where B is the number of windows per optimizer step. The data position of a run is therefore one integer (the next
batch number), and a batch holds the same windows whatever the number of processes or the accumulation split.

Document masking: every window carries position ids that restart at 0 where a document starts (from the shards'
`.idx` offsets). Transformers turns restarting positions into a block-diagonal causal mask for SDPA and eager
attention, and into variable-length (cu_seqlens) kernels for FlashAttention-2 when the batch is flattened into
one row, so no token attends across a document boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from llmforge.data.shards import TokenShards


@dataclass
class Batch:
    input_ids: np.ndarray  # (rows, seq_len) int64
    targets: np.ndarray  # (rows, seq_len) int64: the next token of every input
    position_ids: np.ndarray  # (rows, seq_len) int64

    def flattened(self) -> Batch:
        """All rows as one row (positions still restart per window): the layout FlashAttention's varlen path
        reads document boundaries from."""
        return Batch(*(a.reshape(1, -1) for a in (self.input_ids, self.targets, self.position_ids)))


def document_positions(ends: np.ndarray, start: int, length: int) -> np.ndarray:
    """Position ids of tokens [start, start + length) of a shard: counting from 0 at the window start and again
    at every document start inside the window (`ends` are the exclusive document end offsets)."""
    low = np.searchsorted(ends, start, side="right")
    high = np.searchsorted(ends, start + length, side="left")
    boundaries = ends[low:high].astype(np.int64) - start  # documents starting strictly inside the window
    segment_starts = np.concatenate([[0], boundaries])
    segment = np.zeros(length, dtype=np.int64)
    segment[boundaries] = 1
    return np.arange(length, dtype=np.int64) - segment_starts[np.cumsum(segment)]


class PackedWindows:
    """Fixed-length windows over one split of a tokens artifact."""

    def __init__(
        self, root: str | Path, split: str, seq_len: int, seed: int = 0, document_masking: bool = True
    ):
        self.seq_len = seq_len
        self.seed = seed
        self.document_masking = document_masking
        self.shards = TokenShards(root).shards(split)
        per_shard = [len(shard) // (seq_len + 1) for shard in self.shards]
        self.first_window = np.concatenate([[0], np.cumsum(per_shard)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.first_window[-1])

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shard_number = int(np.searchsorted(self.first_window, index, side="right") - 1)
        shard = self.shards[shard_number]
        start = (index - int(self.first_window[shard_number])) * (self.seq_len + 1)
        tokens = np.asarray(shard.tokens[start : start + self.seq_len + 1], dtype=np.int64)
        if self.document_masking:
            positions = document_positions(shard.ends, start, self.seq_len)
        else:
            positions = np.arange(self.seq_len, dtype=np.int64)
        return tokens[:-1], tokens[1:], positions

    @lru_cache(maxsize=2)  # noqa: B019 (one object per run; the current and next epoch's order)
    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self))

    def windows_of_batch(self, batch: int, windows_per_batch: int) -> np.ndarray:
        """Window indices of global batch `batch`, epochs chained in their shuffled orders."""
        flat = np.arange(batch * windows_per_batch, (batch + 1) * windows_per_batch, dtype=np.int64)
        epochs, offsets = np.divmod(flat, len(self))
        return np.asarray([self.order(int(e))[o] for e, o in zip(epochs, offsets, strict=True)])

    def gather(self, indices) -> Batch:
        parts = [self.window(int(i)) for i in indices]
        return Batch(*(np.stack(column) for column in zip(*parts, strict=True)))

    def micro_batch(self, batch: int, micro_step: int, rank: int, micro_batch_size: int, accumulation: int,
                    world_size: int) -> Batch:  # fmt: skip
        """The windows one process trains on in one micro-step of global batch `batch`."""
        indices = self.windows_of_batch(batch, micro_batch_size * accumulation * world_size)
        first = (micro_step * world_size + rank) * micro_batch_size
        return self.gather(indices[first : first + micro_batch_size])

    def in_order(self, count: int, rank: int, world_size: int) -> list[int]:
        """The first `count` windows (unshuffled) dealt round-robin to `rank`: validation."""
        return list(range(rank, min(count, len(self)), world_size))
