"""Constrained decoding with llguidance: `response_format` json_object / json_schema and forced tool calls.

A `Constraint` is one request's grammar matcher. The engine asks it for a mask before each sampled token (tokens
the grammar cannot continue with get -inf) and tells it the token chosen; once the grammar is complete (nothing
may follow) the answer ends with finish_reason "stop". Building the token table costs about a second, so
`Grammars` does it once per server, on the first request that needs it.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from llmforge.serving.protocol import APIError

# JSON as json.dumps and chat templates' `tojson` write it: without them llguidance lets any whitespace in, and a
# weak model fills the answer with it
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class Constraint:
    def __init__(self, matcher, vocab_size: int):
        self.matcher, self.vocab_size = matcher, vocab_size

    def mask(self, row):
        """`row` (the logits of one step) with what the grammar forbids at -inf."""
        import torch

        allowed = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8) > 0
        allowed = allowed[: row.shape[-1]]
        keep = torch.zeros(row.shape[-1], dtype=torch.bool)
        keep[: allowed.shape[0]] = allowed
        if not keep.any():  # a grammar error: nothing may follow (the engine then ends the answer)
            return row
        return row.masked_fill(~keep, float("-inf"))

    def advance(self, token: int) -> bool:
        """Take the sampled token; True once the grammar is complete (or broken: never generate past it)."""
        self.matcher.consume_token(token)
        return self.matcher.is_stopped() or self.matcher.is_error()


class Grammars:
    """Compiles grammars for one tokenizer (with the model's end-of-sequence tokens and vocabulary size)."""

    def __init__(self, tokenizer, eos_ids: list[int], vocab_size: int):
        self.tokenizer, self.eos_ids, self.vocab_size = tokenizer, list(eos_ids), vocab_size
        self._llg_tokenizer = None
        self._lock = threading.Lock()

    def _table(self, param: str):
        try:
            import llguidance.hf
        except ImportError:
            raise APIError(400, "constrained decoding needs llguidance on the server (pip install llguidance)",
                           param=param, code="unsupported_parameter") from None  # fmt: skip
        from transformers import PreTrainedTokenizerFast

        if not isinstance(self.tokenizer, PreTrainedTokenizerFast):
            raise APIError(400, "constrained decoding needs a fast (Rust) tokenizer; this model has a slow one",
                           param=param, code="unsupported_parameter")  # fmt: skip
        with self._lock:
            if self._llg_tokenizer is None:
                self._llg_tokenizer = llguidance.hf.from_tokenizer(
                    self.tokenizer, n_vocab=max(len(self.tokenizer), self.vocab_size), eos_token=self.eos_ids
                )
        return self._llg_tokenizer

    def constraint(self, grammar: str, param: str) -> Constraint:
        """A fresh matcher for `grammar` (llguidance's JSON grammar form); a grammar it rejects is a 400."""
        from llguidance import LLMatcher

        table = self._table(param)
        matcher = LLMatcher(table, grammar, log_level=0)
        if matcher.is_error():
            raise APIError(400, f"{param}: the grammar cannot be used: {matcher.get_error()}", param=param,
                           code="invalid_value")  # fmt: skip
        return Constraint(matcher, self.vocab_size)

    def response_format(self, response_format: dict[str, Any]) -> Constraint | None:
        """The constraint for OpenAI's `response_format` (None for plain text)."""
        from llguidance import LLMatcher

        kind = response_format.get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            schema: Any = {"type": "object"}
        else:
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise APIError(400, "response_format.json_schema must be an object with a 'schema' object",
                               param="response_format", code="invalid_value")  # fmt: skip
            schema = spec.get("schema") or {"type": "object"}
        try:
            grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
        except ValueError as exc:
            raise APIError(
                400, f"response_format: {exc}", param="response_format", code="invalid_value"
            ) from None
        return self.constraint(grammar, "response_format")

    def lark(self, lark: str, param: str) -> Constraint:
        from llguidance import LLMatcher

        return self.constraint(LLMatcher.grammar_from_lark(lark), param)

    def marker(self, text: str) -> str:
        """How a Lark grammar matches `text`: as its token when the tokenizer has it as one added token (llguidance
        treats added tokens as special), else as a string."""
        token = self.tokenizer.convert_tokens_to_ids(text)
        added = getattr(self.tokenizer, "added_tokens_decoder", {})
        if isinstance(token, int) and token in added and str(added[token]) == text:
            return f"<[{token}]>"
        return json.dumps(text)
