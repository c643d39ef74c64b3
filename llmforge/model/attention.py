"""Attention over packed documents without a dense `seq x seq` mask: FlexAttention block masks.

A packed training window holds several documents back to back, and its position ids restart where a document
starts. With SDPA, transformers turns restarting positions into a dense block-diagonal mask (batch x seq x seq),
and an explicit mask keeps SDPA off its FlashAttention kernel. FlexAttention instead takes a BlockMask: for each
128 x 128 tile of (query, key) positions, whether it is empty (skipped), full (computed without any mask) or
partial (the `mask_mod` below decides per element, inside the kernel). `document_block_mask` builds that from the
position ids at tile granularity, so nothing of size seq x seq exists at any point, on any device.

The same rule as transformers' SDPA path decides where a document starts (a position that does not continue the
previous one by 1), so both paths attend to exactly the same keys (tests/test_pretrain.py compares them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch.nn.attention.flex_attention import BlockMask

BLOCK = 128  # FlexAttention's default tile (its kernels' block size)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(rows, seq) -> (rows, seq): the document each token belongs to, counting from 0 in every row. A document
    starts wherever the position does not continue the previous one by 1 (transformers' rule for packed rows)."""
    import torch

    previous = torch.cat([position_ids[:, :1] - 1, position_ids[:, :-1]], dim=1)
    return (position_ids - previous != 1).cumsum(dim=1)


def document_block_mask(position_ids: torch.Tensor, block: int = BLOCK) -> BlockMask:
    """A causal FlexAttention BlockMask in which each token attends only to earlier tokens of its own document.

    Built from each tile's first and last document id (documents are contiguous, so ids never decrease along a
    row): a tile (query block i, key block j <= i) holds allowed pairs when the key block's last document reaches
    the query block's first; it is full when j < i and one document spans both blocks whole.
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    docs = document_ids(position_ids)
    rows, seq = docs.shape
    starts = torch.arange(0, seq, block, device=docs.device)
    ends = torch.clamp(starts + block, max=seq)
    first, last = docs[:, starts], docs[:, ends - 1]  # (rows, blocks)
    count = starts.numel()
    i = torch.arange(count, device=docs.device)
    below = i[None, :] <= i[:, None]  # (query block, key block): key block not after the query block
    reach = last[:, None, :] >= first[:, :, None]  # the key block's last document reaches the query block's
    whole = ends == starts + block  # a block without padding beyond seq
    full = (below & ~torch.eye(count, dtype=torch.bool, device=docs.device) & whole[None, :, None]
            & whole[None, None, :] & (first[:, None, :] == last[:, :, None]))  # fmt: skip
    partial = below & reach & ~full

    def ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query block: how many key blocks, and their indices first (what BlockMask stores)."""
        tiles = tiles[:, None]  # a head dimension of 1: the same mask for every head
        indices = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True)
        return tiles.sum(dim=-1, dtype=torch.int32), indices.to(torch.int32)

    def same_document(batch, head, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (docs[batch, q_idx] == docs[batch, kv_idx])

    kv_num_blocks, kv_indices = ordered(partial)
    full_kv_num_blocks, full_kv_indices = ordered(full)
    return BlockMask.from_kv_blocks(kv_num_blocks, kv_indices, full_kv_num_blocks=full_kv_num_blocks,
                                    full_kv_indices=full_kv_indices, BLOCK_SIZE=block, mask_mod=same_document,
                                    seq_lengths=(seq, seq))  # fmt: skip


def model_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor, attention: str) -> dict[str, Any]:
    """The keyword arguments of a training forward pass. Position ids carry the document boundaries: SDPA and
    eager attention get transformers' dense mask from them, FlashAttention-2 its cu_seqlens (flattened rows), and
    FlexAttention the block mask built here (transformers passes a ready 4-D mask through untouched)."""
    inputs: dict[str, Any] = {"input_ids": input_ids, "position_ids": position_ids}
    if attention == "flex_attention":
        inputs["attention_mask"] = document_block_mask(position_ids)
    return inputs


def has_flex_attention() -> bool:
    """This torch has FlexAttention (2.5 and later)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True
