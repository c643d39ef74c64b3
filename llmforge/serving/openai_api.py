"""The OpenAI-compatible HTTP API of the embedded server (FastAPI + SSE), in front of the batching engine.

Routes: POST /v1/chat/completions and /v1/completions (both with `stream`), GET /v1/models, /health, /stats.
Errors use OpenAI's body (serving/protocol.py) with a 4xx status; nothing a client sends can stop the server.
Every response carries `x-llmforge-fingerprint`: the fingerprint of the artifact that answered (of the served
artifact for routes that name no model).

The routes are plain module-level functions on one `APIRouter`. What they share (engine, tokenizer, served
models, defaults) is the `ServerState` that `build_app` puts on `app.state`; the `State` dependency hands it to
each route. A completion route reads the body (`read`), turns it into a `Job` (serving/jobs.py: prompts and
sampling settings, one per choice), runs it on the engine (`generate`), and shapes the engine's events into
OpenAI's answer or stream (serving/answers.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmforge.serving.answers import answers, usage
from llmforge.serving.engine import Engine, Event, GenerationRequest
from llmforge.serving.grammar import Grammars
from llmforge.serving.jobs import Job, chat_job, completion_job, served
from llmforge.serving.logprobs import TokenTexts
from llmforge.serving.models import ServedModel
from llmforge.serving.protocol import APIError, ChatRequest, CompletionRequest, Params, parse
from llmforge.serving.tools import template_format

FINGERPRINT_HEADER = "x-llmforge-fingerprint"
# how often a non-streaming request checks whether its client is still there
DISCONNECT_POLL_S = 0.1


@dataclass
class Defaults:
    """Sampling defaults from the artifact's generation_config.json."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0


@dataclass
class ServerState:
    engine: Engine
    tokenizer: Any
    models: dict[str, ServedModel]
    fingerprint: str  # the served artifact's
    defaults: Defaults
    api_key: str | None = None
    on_ready: Callable[[], None] | None = None
    max_body_bytes: int = 8 * 2**20  # bigger bodies get a 413
    # derived from the engine and tokenizer
    grammars: Grammars | None = field(default=None, init=False)
    token_texts: TokenTexts | None = field(default=None, init=False)
    tool_format: str | None = field(default=None, init=False)  # how the chat template writes tool calls
    # the most characters one token covers (byte-level BPE: a vocabulary entry has one character per byte): a text
    # longer than this many times the context cannot fit and is refused before it is tokenized
    longest_token: int = field(default=1, init=False)

    def __post_init__(self):
        if self.tokenizer is not None:
            self.grammars = Grammars(
                self.tokenizer, sorted(self.engine.eos_token_ids), self.engine.vocab_size
            )
            self.token_texts = TokenTexts(self.tokenizer)
            self.tool_format = template_format(getattr(self.tokenizer, "chat_template", None))
            self.longest_token = max(1, *(len(token) for token in self.tokenizer.get_vocab()))


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
            scheme, _, given = Headers(scope=scope).get("authorization", "").strip().partition(" ")
            # the scheme is case-insensitive (RFC 9110), the key is not
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.state.api_key.encode()
            ):
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
    return {"object": "list", "data": [card(m, state) for m in state.models.values()]}


@router.get("/v1/models/{name:path}")
async def model(name: str, state: State):
    return card(served(state, name), state)


def card(model: ServedModel, state: ServerState) -> dict[str, Any]:
    """A /v1/models entry, with the context length the engine runs (vLLM's max_model_len: eval reads it)."""
    return {**model.card(), "max_model_len": state.engine.max_model_len}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State):
    body = await read(request, ChatRequest)
    # off the event loop: the template, the tokenizer and a grammar's compilation take CPU time
    job = await run_in_threadpool(chat_job, state, body)
    return await answer(state, request, job, chat=True, streaming=bool(body.stream))


@router.post("/v1/completions")
async def completions(request: Request, state: State):
    body = await read(request, CompletionRequest)
    job = await run_in_threadpool(completion_job, state, body)
    return await answer(state, request, job, chat=False, streaming=bool(body.stream))


async def read(request: Request, kind: type[Params]) -> Params:
    """The request's body as `kind` (every problem an APIError): the one place a request's bytes are read. A body
    over the cap is refused (413) before it is all read."""
    cap = request.app.state.server.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise APIError(413, f"the request body is {declared} bytes; this server takes at most {cap}",
                       code="request_too_large")  # fmt: skip
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > cap:
            raise APIError(413, f"the request body is over {cap} bytes, the most this server takes",
                           code="request_too_large")  # fmt: skip
    return parse(bytes(raw), kind)


async def answer(state: ServerState, request: Request, job: Job, chat: bool, streaming: bool):
    """The whole answer, or its stream of chunks."""
    kind = "chat.completion" if chat else "text_completion"
    if streaming:
        return sse(stream(state, request, job, chat), job.target)
    built = answers(job, chat, state.token_texts)
    async for index, event in generate(state, request, job, stream=False):
        built[index].feed(event)
    if any(b.final is None for b in built):  # the client disconnected
        return JSONResponse({}, status_code=499)
    body = {**job.meta, "object": kind, "choices": [b.choice() for b in built],
            "usage": usage(job, [b.final for b in built], state.engine.prefix_caching)}  # fmt: skip
    return JSONResponse(body, headers=headers_for(job.target))


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
    for index, choice in enumerate(job.choices):
        pending.append(GenerationRequest(
            choice.prompt_ids, choice.params, adapter=job.target.adapter,
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


async def stream(state: ServerState, request: Request, job: Job, chat: bool) -> AsyncIterator[dict[str, Any]]:
    """Chunks as OpenAI streams them: (chat) each choice's role first, then deltas with the choice's index,
    a finish reason per choice, and the usage last when asked for."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    built = answers(job, chat, state.token_texts)
    if chat:
        for index in range(len(built)):
            yield {**job.meta, "object": kind, "choices": [
                {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                 "logprobs": None}]}  # fmt: skip
    async for index, event in generate(state, request, job, stream=True):
        for entry in built[index].feed(event):
            yield {**job.meta, "object": kind, "choices": [entry]}
    if job.include_usage:
        yield {
            **job.meta,
            "object": kind,
            "choices": [],
            "usage": usage(job, [b.final for b in built], state.engine.prefix_caching),
        }


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


def headers_for(target: ServedModel) -> dict[str, str]:
    return {FINGERPRINT_HEADER: target.fingerprint}
