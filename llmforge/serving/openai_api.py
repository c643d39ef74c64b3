"""The OpenAI-compatible HTTP API of the embedded server (FastAPI + SSE), in front of the batching engine.

Routes: POST /v1/chat/completions and /v1/completions (both with `stream`), GET /v1/models, /health, /stats.
Errors use OpenAI's body, {"error": {"message", "type", "param", "code"}}, with a 4xx status; nothing a client
sends can stop the server. Every response carries `x-llmforge-fingerprint`: the fingerprint of the artifact that
answered (of the served artifact for routes that name no model).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmforge.serving.engine import Engine, Event, GenerationRequest, SamplingParams
from llmforge.serving.models import ServedModel

FINGERPRINT_HEADER = "x-llmforge-fingerprint"
# how often a non-streaming request checks whether its client is still there
DISCONNECT_POLL_S = 0.1


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------------------------
# Request bodies (unknown fields are ignored, as OpenAI does; known but unsupported ones are refused)


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


class Params(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(1, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = 0
    frequency_penalty: float | None = 0
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    user: str | None = None
    # vLLM's extensions, so benchmarks and tests can ask for an exact number of tokens
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)


class ChatRequest(Params):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(Params):
    prompt: str | list[str]
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


# Sampling parameters of vLLM and other OpenAI-compatible servers that change the answer and that this server does
# not implement, with the values that change nothing (sent by clients that always send their defaults)
FOREIGN_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "top_k": (None, 0, -1), "min_p": (None, 0), "repetition_penalty": (None, 1), "length_penalty": (None, 1),
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
        ("n", body.n not in (None, 1), "n > 1 is not supported; send several requests (they are batched)"),
        ("logprobs", bool(body.logprobs), "logprobs are not supported by this server"),
        ("presence_penalty", bool(body.presence_penalty), "presence_penalty is not supported"),
        ("frequency_penalty", bool(body.frequency_penalty), "frequency_penalty is not supported"),
        ("logit_bias", bool(body.logit_bias), "logit_bias is not supported"),
    ]
    if isinstance(body, ChatRequest):
        checks += [
            ("tools", bool(body.tools) or body.tool_choice not in (None, "none"), "tools are not supported"),
            ("top_logprobs", bool(body.top_logprobs), "logprobs are not supported by this server"),
            (
                "response_format",
                (body.response_format or {}).get("type", "text") != "text",
                'only response_format {"type": "text"} is supported',
            ),  # fmt: skip
        ]
    else:
        checks += [
            ("echo", bool(body.echo), "echo is not supported"),
            ("suffix", bool(body.suffix), "suffix is not supported"),
            ("best_of", body.best_of not in (None, 1), "best_of > 1 is not supported"),
        ]
    return next(((param, message) for param, bad, message in checks if bad), None)


# ---------------------------------------------------------------------------------------------------------------
# The application


@dataclass
class Defaults:
    """Sampling defaults from the artifact's generation_config.json."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256


@dataclass
class ServerState:
    engine: Engine
    tokenizer: Any
    models: dict[str, ServedModel]
    fingerprint: str  # the served artifact's
    defaults: Defaults
    api_key: str | None = None
    on_ready: Callable[[], None] | None = None


class AuthAndFingerprint:
    """ASGI middleware: the API key check, the fingerprint header on every response, and a JSON 500 for whatever
    one request raised (the server keeps serving). Plain ASGI rather than `@app.middleware("http")`: Starlette's
    BaseHTTPMiddleware hides the client's disconnect from `request.is_disconnected()`, so a non-streaming request
    whose client went away would generate to the end."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        from fastapi.responses import JSONResponse
        from starlette.datastructures import Headers, MutableHeaders

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fingerprint = self.state.fingerprint
        if self.state.api_key and scope["path"] != "/health":
            given = Headers(scope=scope).get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.state.api_key}".encode()):
                error = APIError(401, "Incorrect API key provided: send 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")  # fmt: skip
                response = JSONResponse(
                    error.body(), status_code=401, headers={FINGERPRINT_HEADER: fingerprint}
                )
                await response(scope, receive, send)
                return
        started = False

        async def send_tagged(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                if FINGERPRINT_HEADER not in headers:  # routes that name a model set their own
                    headers.append(FINGERPRINT_HEADER, fingerprint)
            await send(message)

        try:
            await self.app(scope, receive, send_tagged)
        except Exception as exc:
            if started:  # the response is under way (a stream): nothing else can be sent
                raise
            error = APIError(500, f"{type(exc).__name__}: {exc}", type_="server_error")
            response = JSONResponse(error.body(), status_code=500, headers={FINGERPRINT_HEADER: fingerprint})
            await response(scope, receive, send)


def build_app(state: ServerState):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from sse_starlette import EventSourceResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @asynccontextmanager
    async def lifespan(app):
        state.engine.start()
        if state.on_ready:
            state.on_ready()
        yield
        state.engine.stop()

    app = FastAPI(title="llmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        error = APIError(
            exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None
        )
        return JSONResponse(error.body(), status_code=exc.status_code)

    app.add_middleware(AuthAndFingerprint, state=state)

    @app.get("/health")
    async def health():
        return {"status": "ok", "fingerprint": state.fingerprint}

    @app.get("/stats")
    async def stats():
        return state.engine.snapshot()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [m.card() for m in state.models.values()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        return served(name).card()

    def served(name: str) -> ServedModel:
        if name not in state.models:
            raise APIError(404, f"The model '{name}' does not exist; served: {', '.join(state.models)}",
                           param="model", code="model_not_found")  # fmt: skip
        return state.models[name]

    async def parse(request: Request, kind: type[Params]) -> Params:
        try:
            data = json.loads(await request.body())
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

    def sampling(
        body: Params, prompt_tokens: int, max_tokens: int | None, prompt_param: str
    ) -> SamplingParams:
        limit = state.engine.max_model_len
        if prompt_tokens + 1 > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens; the prompt has "
                                f"{prompt_tokens}", param=prompt_param, code="context_length_exceeded")  # fmt: skip
        if max_tokens is not None and prompt_tokens + max_tokens > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens; you requested "
                                f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, {max_tokens} to "
                                f"generate)", param="max_tokens", code="context_length_exceeded")  # fmt: skip
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(not s for s in stop):
            raise APIError(400, "stop sequences must not be empty", param="stop", code="invalid_value")
        default_temperature, default_top_p = state.defaults.temperature, state.defaults.top_p
        return SamplingParams(
            max_tokens=max_tokens or min(state.defaults.max_tokens, limit - prompt_tokens),
            temperature=default_temperature if body.temperature is None else body.temperature,
            top_p=default_top_p if body.top_p is None else body.top_p,
            stop=stop, seed=body.seed, ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
        )  # fmt: skip

    async def generate(request: Request, prompts: list[list[int]], params: list[SamplingParams],
                       target: ServedModel, stream: bool) -> AsyncIterator[tuple[int, Event]]:  # fmt: skip
        """Submit one engine request per prompt; yield (index, event) until all finished. Leaving early (the
        client went away) cancels what is still running."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        pending = []
        for index, (ids, sampling_params) in enumerate(zip(prompts, params, strict=True)):
            pending.append(GenerationRequest(
                ids, sampling_params, adapter=target.adapter,
                on_event=lambda event, i=index: loop.call_soon_threadsafe(events.put_nowait, (i, event)),
            ))  # fmt: skip
        for engine_request in pending:
            state.engine.submit(engine_request)
        running = len(pending)
        check_at = loop.time() + DISCONNECT_POLL_S
        try:
            while running:
                if stream:  # sse-starlette watches the connection and closes this generator
                    index, event = await events.get()
                else:
                    # tokens usually arrive faster than the poll interval: check on a clock, not on a quiet queue
                    if loop.time() >= check_at:
                        if await request.is_disconnected():
                            return
                        check_at = loop.time() + DISCONNECT_POLL_S
                    try:
                        index, event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                    except TimeoutError:
                        continue
                if event.finish_reason is not None:
                    running -= 1
                    if event.finish_reason in ("error", "cancelled"):
                        raise APIError(500 if event.finish_reason == "error" else 503,
                                       event.error or "generation cancelled", type_="server_error")  # fmt: skip
                yield index, event
        finally:
            for engine_request in pending:
                engine_request.cancel()

    def headers_for(target: ServedModel) -> dict[str, str]:
        return {FINGERPRINT_HEADER: target.fingerprint}

    def usage(finals: list[Event]) -> dict[str, int]:
        prompt = sum(e.prompt_tokens for e in finals)
        completion = sum(e.completion_tokens for e in finals)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def sse(chunks: AsyncIterator[dict[str, Any]], target: ServedModel):
        async def events():
            try:
                async for chunk in chunks:
                    yield {"data": json.dumps(chunk)}
            except APIError as exc:
                yield {"data": json.dumps(exc.body())}
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), headers=headers_for(target), ping=15)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatRequest)
        target = served(body.model)
        messages = [{"role": m.role, "content": message_text(m)} for m in body.messages]
        try:
            text = state.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # the template itself rejects the conversation (roles out of order...)
            raise APIError(400, f"the chat template rejected the messages: {exc}", param="messages") from None
        ids = state.tokenizer(text, add_special_tokens=False)["input_ids"]
        params = sampling(body, len(ids), body.max_completion_tokens or body.max_tokens, "messages")
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name,
                "system_fingerprint": target.fingerprint}  # fmt: skip
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        if body.stream:

            async def chunks():
                def chunk(delta, finish=None):
                    return {**meta, "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}  # fmt: skip

                yield chunk({"role": "assistant", "content": ""})
                async for _, event in generate(request, [ids], [params], target, stream=True):
                    if event.text:
                        yield chunk({"content": event.text})
                    if event.finish_reason:
                        yield chunk({}, event.finish_reason)
                        if include_usage:
                            yield {
                                **meta,
                                "object": "chat.completion.chunk",
                                "choices": [],
                                "usage": usage([event]),
                            }

            return sse(chunks(), target)

        text, final = "", None
        async for _, event in generate(request, [ids], [params], target, stream=False):
            text += event.text
            final = event if event.finish_reason else final
        if final is None:  # the client disconnected
            return JSONResponse({}, status_code=499)
        return JSONResponse({**meta, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": final.finish_reason,
             "logprobs": None}], "usage": usage([final])}, headers=headers_for(target))  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionRequest)
        target = served(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        ids = [state.tokenizer(p)["input_ids"] for p in prompts]
        params = [sampling(body, len(i), body.max_tokens, "prompt") for i in ids]
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name,
                "system_fingerprint": target.fingerprint}  # fmt: skip
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        if body.stream:

            async def chunks():
                finals = []
                async for index, event in generate(request, ids, params, target, stream=True):
                    if event.text or event.finish_reason:
                        yield {**meta, "object": "text_completion", "choices": [
                            {"index": index, "text": event.text, "finish_reason": event.finish_reason,
                             "logprobs": None}]}  # fmt: skip
                    if event.finish_reason:
                        finals.append(event)
                if include_usage:
                    yield {**meta, "object": "text_completion", "choices": [], "usage": usage(finals)}

            return sse(chunks(), target)

        texts, finals = [""] * len(ids), [None] * len(ids)
        async for index, event in generate(request, ids, params, target, stream=False):
            texts[index] += event.text
            finals[index] = event if event.finish_reason else finals[index]
        if any(f is None for f in finals):  # the client disconnected
            return JSONResponse({}, status_code=499)
        choices = [{"index": i, "text": texts[i], "finish_reason": finals[i].finish_reason, "logprobs": None}
                   for i in range(len(ids))]  # fmt: skip
        return JSONResponse({**meta, "object": "text_completion", "choices": choices, "usage": usage(finals)},
                            headers=headers_for(target))  # fmt: skip

    return app


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
