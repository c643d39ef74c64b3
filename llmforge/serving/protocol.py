"""The OpenAI wire format the embedded server speaks: request bodies, what it refuses, and the error body.

Unknown fields are ignored, as OpenAI does; known fields the server cannot honour are refused with a 400 that
names them (`unsupported`), so a client never gets an answer that silently ignored what it asked for. Supporting
a parameter means computing it (serving/jobs.py, answers.py) and dropping its line from `unsupported`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """An error as OpenAI sends it: a 4xx/5xx status and {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------------------------
# Request bodies

MAX_N = 64  # choices per prompt
MAX_LOGPROBS = 20  # most likely alternatives per token (OpenAI's limit for chat)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class Function(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: Function


class Params(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(1, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    # OpenAI's penalties on what the answer has generated so far: each token's logit less presence_penalty once
    # it has appeared, less frequency_penalty for every time it has
    presence_penalty: float | None = Field(0, ge=-2, le=2)
    frequency_penalty: float | None = Field(0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extensions: an exact number of tokens (benchmarks, tests), and its sampling parameters; None: the
    # artifact's generation config
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    # top_k: the k most likely tokens only (0 or -1: all); min_p: tokens at least min_p times as likely as the
    # most likely one; repetition_penalty p: on prompt and answer tokens, positive logits / p, negative ones x p
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)


class ChatRequest(Params):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    response_format: dict[str, Any] | None = None


class CompletionRequest(Params):
    # text, texts, token ids or lists of token ids (lm-eval's local-completions sends token ids)
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


# Sampling parameters of vLLM and other OpenAI-compatible servers that change the answer and that this server does
# not implement, with the values that change nothing (sent by clients that always send their defaults)
FOREIGN_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "length_penalty": (None, 1),
    "use_beam_search": (None, False), "stop_token_ids": (None, []), "prompt_logprobs": (None, 0),
    "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
    "structured_outputs": (None,), "functions": (None, []), "function_call": (None, "none"),
}  # fmt: skip


def unsupported(body: Params) -> tuple[str, str] | None:
    """The first parameter this server cannot honour, with why (None when all are fine)."""
    extra = body.model_extra or {}
    foreign = [name for name, neutral in FOREIGN_NEUTRAL.items() if extra.get(name) not in neutral]
    checks = [
        *((name, True, f"{name} is not supported by this server") for name in foreign),
        ("logit_bias", bool(body.logit_bias), "logit_bias is not supported"),
    ]
    if isinstance(body, ChatRequest):
        kind = (body.response_format or {}).get("type", "text")
        checks += [
            ("top_logprobs", body.top_logprobs is not None and not body.logprobs,
             "top_logprobs needs logprobs: true"),
            ("tool_choice", body.tool_choice not in (None, "none", "auto") and not body.tools,
             "tool_choice needs tools"),
            ("response_format", kind not in ("text", "json_object", "json_schema"),
             f"response_format type {kind!r}: expected text, json_object or json_schema"),
            ("response_format", bool(body.tools) and kind != "text" and body.tool_choice != "none",
             "response_format and tools cannot be combined (one grammar per answer)"),
        ]  # fmt: skip
    else:
        checks += [
            ("suffix", bool(body.suffix), "suffix is not supported"),
            ("best_of", body.best_of not in (None, 1), "best_of > 1 is not supported"),
        ]
    return next(((param, message) for param, bad, message in checks if bad), None)


def parse(raw: bytes, kind: type[Params]) -> Params:
    """A request body, validated, with what this server cannot honour refused; every problem is an APIError."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"The request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object", code="invalid_json")
    try:
        body = kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']}", param=param, code="invalid_value") from None
    problem = unsupported(body)
    if problem:
        raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
    return body


def message_text(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"content parts of type {part.type!r} are not supported (text only)",
                           param="messages", code="unsupported_parameter")  # fmt: skip
        parts.append(part.text)
    return "".join(parts)
