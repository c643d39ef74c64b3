"""The OpenAI-compatible HTTP API of the embedded server (FastAPI + SSE), in front of the batching engine.

Routes: POST /v1/chat/completions and /v1/completions (both with `stream`), GET /v1/models, /health, /stats.
Errors use OpenAI's body (serving/protocol.py) with a 4xx status; nothing a client sends can stop the server.
Every response carries `x-llmforge-fingerprint`: the fingerprint of the artifact that answered (of the served
artifact for routes that name no model).

The routes are plain module-level functions on one `APIRouter`. What they share (engine, tokenizer, served
models, defaults) is the `ServerState` that `build_app` puts on `app.state`; the `State` dependency hands it to
each route. A completion route reads the body (`read`), turns it into a `Job` (prompts and sampling settings, one
per choice), runs it on the engine (`generate`), and shapes the engine's events into OpenAI's answer or stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmforge.serving.engine import Engine, Event, GenerationRequest, SamplingParams
from llmforge.serving.models import ServedModel
from llmforge.serving.protocol import APIError, ChatRequest, CompletionRequest, Params, message_text, parse

FINGERPRINT_HEADER = "x-llmforge-fingerprint"
# how often a non-streaming request checks whether its client is still there
DISCONNECT_POLL_S = 0.1


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


# ---------------------------------------------------------------------------------------------------------------
# The application


def build_app(state: ServerState) -> FastAPI:
    """The server for `state`: the routes below, OpenAI error bodies, the API key and the fingerprint header."""
    app = FastAPI(title="llmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(AuthAndFingerprint, state=state)
    app.include_router(router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The engine's thread runs while the server does."""
    state: ServerState = app.state.server
    state.engine.start()
    if state.on_ready:
        state.on_ready()
    yield
    state.engine.stop()


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in OpenAI's body."""
    error = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(error.body(), status_code=exc.status_code)


class AuthAndFingerprint:
    """ASGI middleware: the API key check, the fingerprint header on every response, and a JSON 500 for whatever
    one request raised (the server keeps serving). Plain ASGI rather than `@app.middleware("http")`: Starlette's
    BaseHTTPMiddleware hides the client's disconnect from `request.is_disconnected()`, so a non-streaming request
    whose client went away would generate to the end."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
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


async def server_state(request: Request) -> ServerState:
    """What every route is handed (`State`): the server `build_app` made."""
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]
router = APIRouter()


# ---------------------------------------------------------------------------------------------------------------
# Routes


@router.get("/health")
async def health(state: State):
    return {"status": "ok", "fingerprint": state.fingerprint}


@router.get("/stats")
async def stats(state: State):
    return state.engine.snapshot()


@router.get("/v1/models")
async def models(state: State):
    return {"object": "list", "data": [m.card() for m in state.models.values()]}


@router.get("/v1/models/{name:path}")
async def model(name: str, state: State):
    return served(state, name).card()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State):
    body = await read(request, ChatRequest)
    job = chat_job(state, body)
    if body.stream:
        return sse(chat_stream(state, request, job), job.target)
    answer = await collect(state, request, job)
    if answer is None:  # the client disconnected
        return JSONResponse({}, status_code=499)
    texts, finals = answer
    choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": final.finish_reason,
                "logprobs": None} for i, (text, final) in enumerate(zip(texts, finals, strict=True))]  # fmt: skip
    return JSONResponse({**job.meta, "object": "chat.completion", "choices": choices, "usage": usage(finals)},
                        headers=headers_for(job.target))  # fmt: skip


@router.post("/v1/completions")
async def completions(request: Request, state: State):
    body = await read(request, CompletionRequest)
    job = completion_job(state, body)
    if body.stream:
        return sse(completion_stream(state, request, job), job.target)
    answer = await collect(state, request, job)
    if answer is None:  # the client disconnected
        return JSONResponse({}, status_code=499)
    texts, finals = answer
    choices = [{"index": i, "text": text, "finish_reason": final.finish_reason, "logprobs": None}
               for i, (text, final) in enumerate(zip(texts, finals, strict=True))]  # fmt: skip
    return JSONResponse({**job.meta, "object": "text_completion", "choices": choices, "usage": usage(finals)},
                        headers=headers_for(job.target))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# From a request to a job for the engine


@dataclass
class Job:
    """A validated completion request, ready for the engine: one prompt and its sampling settings per choice."""

    target: ServedModel
    prompts: list[list[int]]
    params: list[SamplingParams]
    meta: dict[str, Any]  # id, created, model, system_fingerprint: the same in every chunk
    include_usage: bool  # streaming: a last chunk with the usage


async def read(request: Request, kind: type[Params]) -> Params:
    """The request's body as `kind` (every problem an APIError): the one place a request's bytes are read."""
    return parse(await request.body(), kind)


def served(state: ServerState, name: str) -> ServedModel:
    if name not in state.models:
        raise APIError(404, f"The model '{name}' does not exist; served: {', '.join(state.models)}",
                       param="model", code="model_not_found")  # fmt: skip
    return state.models[name]


def chat_job(state: ServerState, body: ChatRequest) -> Job:
    """The conversation through the model's own chat template, ready to answer."""
    target = served(state, body.model)
    messages = [{"role": m.role, "content": message_text(m)} for m in body.messages]
    try:
        text = state.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                   chat_template=target.chat_template)  # fmt: skip
    except Exception as exc:  # the template itself rejects the conversation (roles out of order...)
        raise APIError(400, f"the chat template rejected the messages: {exc}", param="messages") from None
    ids = state.tokenizer(text, add_special_tokens=False)["input_ids"]
    params = sampling(state, body, len(ids), body.max_completion_tokens or body.max_tokens, "messages")
    return Job(target, [ids], [params], meta("chatcmpl", target), wants_usage(body))


def completion_job(state: ServerState, body: CompletionRequest) -> Job:
    """One choice per prompt (a string or a list of them)."""
    target = served(state, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    ids = [state.tokenizer(p)["input_ids"] for p in prompts]
    params = [sampling(state, body, len(i), body.max_tokens, "prompt") for i in ids]
    return Job(target, ids, params, meta("cmpl", target), wants_usage(body))


def meta(prefix: str, target: ServedModel) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name,
            "system_fingerprint": target.fingerprint}  # fmt: skip


def wants_usage(body: Params) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def sampling(state: ServerState, body: Params, prompt_tokens: int, max_tokens: int | None,
             prompt_param: str) -> SamplingParams:  # fmt: skip
    """The engine's settings for one prompt: the request's, else the artifact's generation config; the context
    length checked."""
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
    defaults = state.defaults
    return SamplingParams(
        max_tokens=max_tokens or min(defaults.max_tokens, limit - prompt_tokens),
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        stop=stop, seed=body.seed, ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Running a job, and its answer or stream


async def generate(
    state: ServerState, request: Request, job: Job, stream: bool
) -> AsyncIterator[tuple[int, Event]]:
    """Submit one engine request per prompt; yield (choice index, event) until all finished. Leaving early (the
    client went away) cancels what is still running."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    pending = []
    for index, (ids, sampling_params) in enumerate(zip(job.prompts, job.params, strict=True)):
        pending.append(GenerationRequest(
            ids, sampling_params, adapter=job.target.adapter,
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


async def collect(state: ServerState, request: Request, job: Job) -> tuple[list[str], list[Event]] | None:
    """Every choice's whole text and final event; None when the client went away before the end."""
    texts: list[str] = [""] * len(job.prompts)
    finals: list[Event | None] = [None] * len(job.prompts)
    async for index, event in generate(state, request, job, stream=False):
        texts[index] += event.text
        finals[index] = event if event.finish_reason else finals[index]
    if any(final is None for final in finals):
        return None
    return texts, finals


async def chat_stream(state: ServerState, request: Request, job: Job) -> AsyncIterator[dict[str, Any]]:
    """chat.completion.chunk objects: the role, then content deltas, a finish reason per choice, the usage."""

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**job.meta, "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}  # fmt: skip

    for index in range(len(job.prompts)):
        yield chunk(index, {"role": "assistant", "content": ""})
    finals = []
    async for index, event in generate(state, request, job, stream=True):
        if event.text:
            yield chunk(index, {"content": event.text})
        if event.finish_reason:
            yield chunk(index, {}, event.finish_reason)
            finals.append(event)
    if job.include_usage:
        yield {**job.meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(finals)}


async def completion_stream(state: ServerState, request: Request, job: Job) -> AsyncIterator[dict[str, Any]]:
    """text_completion objects: text deltas and a finish reason per choice, then the usage."""
    finals = []
    async for index, event in generate(state, request, job, stream=True):
        if event.text or event.finish_reason:
            yield {**job.meta, "object": "text_completion", "choices": [
                {"index": index, "text": event.text, "finish_reason": event.finish_reason, "logprobs": None}]}  # fmt: skip
        if event.finish_reason:
            finals.append(event)
    if job.include_usage:
        yield {**job.meta, "object": "text_completion", "choices": [], "usage": usage(finals)}


def sse(chunks: AsyncIterator[dict[str, Any]], target: ServedModel) -> EventSourceResponse:
    """Server-sent events as OpenAI sends them: one JSON object per event, an error as its body, then [DONE]."""

    async def events():
        try:
            async for chunk in chunks:
                yield {"data": json.dumps(chunk)}
        except APIError as exc:
            yield {"data": json.dumps(exc.body())}
        yield {"data": "[DONE]"}

    return EventSourceResponse(events(), headers=headers_for(target), ping=15)


def usage(finals: list[Event]) -> dict[str, int]:
    prompt = sum(e.prompt_tokens for e in finals)
    completion = sum(e.completion_tokens for e in finals)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def headers_for(target: ServedModel) -> dict[str, str]:
    return {FINGERPRINT_HEADER: target.fingerprint}
