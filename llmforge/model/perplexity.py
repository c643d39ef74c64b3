"""Perplexity on held-out text: the quality check after quantization (and anywhere a quick LM score helps)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def windows(documents: Iterable[list[int]], seq_len: int, max_tokens: int) -> list[list[int]]:
    """Cut the concatenated documents into windows of `seq_len` tokens, `max_tokens` in all at most.

    A stream shorter than one window gives one shorter window, so small held-out sets still get a score.
    """
    cut, buffer = [], []
    for ids in documents:
        buffer.extend(int(i) for i in ids)
        while len(buffer) >= seq_len and (len(cut) + 1) * seq_len <= max_tokens:
            cut.append(buffer[:seq_len])
            buffer = buffer[seq_len:]
        if (len(cut) + 1) * seq_len > max_tokens:
            break
    if not cut and len(buffer) >= 2:
        cut.append(buffer[:max_tokens])
    return cut


def perplexity(model, token_windows: list[list[int]], batch_size: int = 4) -> float:
    """exp(mean negative log-likelihood) of every next token inside the windows."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(token_windows), batch_size):
            group = token_windows[start : start + batch_size]
            length = min(len(w) for w in group)
            ids = torch.tensor([w[:length] for w in group], device=device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            targets = ids[:, 1:]
            total += float(
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
            )
            count += targets.numel()
    return math.exp(total / count)
