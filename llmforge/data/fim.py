"""Fill-in-the-middle for `tokenize encode --fim-rate` (Bavarian et al. 2022, "Efficient Training of Language
Models to Fill in the Middle"; StarCoder, Code Llama and Qwen2.5-Coder train this way).

A share of the training documents is cut at two character positions drawn uniformly, into a prefix, a middle and
a suffix, and rewritten so that the middle comes last: PSM `<PRE> prefix <SUF> suffix <MID> middle` or, for
`spm_rate` of them, SPM `<PRE> <SUF> suffix <MID> prefix middle` (the paper's SPM variant, as StarCoder trains
it). The document still ends with EOS, so the model learns to stop once the middle is filled. The cut is by
characters, not tokens, so the model meets mid-token boundaries as a user's cursor makes them: each part is
tokenized on its own. Validation documents are left whole, so validation loss compares with a run without FIM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# The sentinels' spellings, first found wins: llmforge's and Qwen2.5-Coder's, then StarCoder's and SantaCoder's.
SPELLINGS = (
    ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"),
    ("<fim_prefix>", "<fim_middle>", "<fim_suffix>"),
)


def sentinel_ids(vocabulary: dict[str, int]) -> tuple[int, int, int] | None:
    """(prefix, middle, suffix) token ids of the first spelling the vocabulary holds whole, or None."""
    for spelling in SPELLINGS:
        if all(token in vocabulary for token in spelling):
            return tuple(vocabulary[token] for token in spelling)  # type: ignore[return-value]
    return None


# Documents checked to decode back to their own tokens before the tokenizer is trusted to (byte-level BPE always
# does); a tokenizer that fails once is checked on every document from then on.
CHECKED_DOCUMENTS = 64


class FillInTheMiddle:
    """Rewrites token documents into FIM order with probability `rate` (drawn from the generator each call is
    given), counting what it did. A document that does not decode back to its own tokens (a tokenizer that is
    not lossless on it) is left as it is and counted as skipped; the check costs an encode of the whole document,
    so it runs on the first CHECKED_DOCUMENTS drawn, and on all of them once one has failed."""

    def __init__(self, decode: Callable[[list[int]], str], encode: Callable[[list[str]], Sequence],
                 sentinels: tuple[int, int, int], rate: float, spm_rate: float) -> None:  # fmt: skip
        self.decode, self.encode, self.rate, self.spm_rate = decode, encode, rate, spm_rate
        self.prefix_id, self.middle_id, self.suffix_id = sentinels
        # what the tokenizer puts before any text (BOS): kept once, at the start
        self.leading = [int(i) for i in encode([""])[0]]
        self.documents = self.rewritten = self.spm = self.skipped = 0

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.documents += 1
        if rng.random() >= self.rate:
            return ids
        tokens = ids.tolist()
        start = len(self.leading) if tokens[: len(self.leading)] == self.leading else 0
        text = self.decode(tokens[start:])
        checking = self.skipped or self.rewritten < CHECKED_DOCUMENTS
        if len(text) < 2 or (checking and [int(i) for i in self.encode([text])[0]] != tokens):
            self.skipped += 1
            return ids
        cut, end = sorted(int(x) for x in rng.integers(0, len(text) + 1, size=2))
        prefix, middle, suffix = self._parts([text[:cut], text[cut:end], text[end:]])
        if rng.random() < self.spm_rate:
            self.spm += 1
            body = [self.prefix_id, self.suffix_id, *suffix, self.middle_id, *prefix, *middle]
        else:
            body = [self.prefix_id, *prefix, self.suffix_id, *suffix, self.middle_id, *middle]
        self.rewritten += 1
        return np.asarray(self.leading + body, dtype=ids.dtype)

    def _parts(self, texts: list[str]) -> list[list[int]]:
        """Each text's tokens, without what the tokenizer adds in front of every text."""
        parts = [[int(i) for i in ids] for ids in self.encode(texts)]
        return [
            ids[len(self.leading) :] if ids[: len(self.leading)] == self.leading else ids for ids in parts
        ]

    def stats(self) -> dict[str, float | int]:
        return {"rate": self.rate, "spm_rate": self.spm_rate, "documents": self.rewritten, "spm": self.spm,
                "skipped": self.skipped}  # fmt: skip
