"""Log-probabilities as OpenAI sends them, from the engine's (token id, log-probability, top k) triples.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}`.
Completions: `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, where `top_logprobs` maps token text
to log-probability and, with `echo`, the prompt's tokens come first with `None` for the first one (nothing comes
before it to predict it). The values are the model's own log-softmax, before temperature, top_p or a grammar
changed the sampling (as vLLM reports them by default).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from llmforge.serving.engine import TokenLogprob


class TokenTexts:
    """Each token's own text (a token that ends inside a UTF-8 character shows its bytes as U+FFFD, as decoding
    it alone does); cached, as the same tokens come back all the time."""

    def __init__(self, tokenizer):
        self.text = lru_cache(maxsize=65536)(lambda token: tokenizer.decode([token]))


def chat_entries(texts: TokenTexts, logprobs: list[TokenLogprob]) -> list[dict[str, Any]]:
    def entry(token: int, value: float) -> dict[str, Any]:
        text = texts.text(token)
        return {"token": text, "logprob": value, "bytes": list(text.encode())}

    return [{**entry(token, value), "top_logprobs": [entry(t, v) for t, v in top]}
            for token, value, top in logprobs]  # fmt: skip


class CompletionLogprobs:
    """One completion choice's logprobs object, built piece by piece as its text is (text offsets count from the
    start of the choice's text, the echoed prompt included)."""

    def __init__(self, texts: TokenTexts):
        self.texts = texts
        self.offset = 0
        self.reset()

    def reset(self) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, logprobs: list[TokenLogprob | None], prompt_ids: list[int] | None = None) -> None:
        """Append tokens; for the prompt's (`prompt_ids`), the first entry is None."""
        for position, item in enumerate(logprobs):
            if item is None:
                token, value, top = prompt_ids[position], None, None
            else:
                token, value, alternatives = item
                top = {self.texts.text(t): v for t, v in alternatives}
                top.setdefault(self.texts.text(token), value)  # the sampled token is always listed
            text = self.texts.text(token)
            self.tokens.append(text)
            self.token_logprobs.append(value)
            self.top_logprobs.append(top)
            self.text_offset.append(self.offset)
            self.offset += len(text)

    def take(self) -> dict[str, Any]:
        """What was added since the last `take` (a stream sends each chunk's tokens with it)."""
        body = {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}  # fmt: skip
        self.reset()
        return body
