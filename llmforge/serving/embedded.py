"""The embedded backend: llmforge's own OpenAI API and batching engine, served with uvicorn.

The engine runs the model with transformers, or, for a gguf artifact, with llama.cpp (serving/gguf_engine.py).
uvicorn handles SIGTERM/SIGINT: it stops accepting connections, lets the requests in flight finish (up to
`graceful_timeout`), then the lifespan stops the engine. The socket is bound before the model loads, so a port
that is taken fails at once, and `--port 0` picks a free one.
"""

from __future__ import annotations

import signal
import socket
from dataclasses import dataclass
from typing import Any

from llmforge.console import emit, log, stdout_to_stderr
from llmforge.errors import InputError
from llmforge.serving.engine import Engine
from llmforge.serving.models import ServingPlan, load
from llmforge.serving.openai_api import Defaults, ServerState, build_app


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)
    return sock


WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # bound on every interface; this machine reaches it here


def base_url(host: str, port: int) -> str:
    """The URL printed on stdout: one this machine can use (a wildcard host becomes the loopback address)."""
    shown = WILDCARDS.get(host, host)
    return f"http://[{shown}]:{port}/v1" if ":" in shown else f"http://{shown}:{port}/v1"


def where(host: str, port: int) -> str:
    """' at URL' for the ready line; a wildcard host also names the URL other machines use."""
    if host not in WILDCARDS:
        return f" at {base_url(host, port)}"
    import socket

    return (f" at {base_url(host, port)} (listening on every interface: other machines use "
            f"{base_url(socket.getfqdn(), port)})")  # fmt: skip


def stderr_logging() -> dict[str, Any]:
    """uvicorn's logging config with every handler on stderr: stdout carries only the URL."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return config


def generation_defaults(generation, model_eos: int | list[int] | None = None) -> tuple[Defaults, list[int]]:
    """Sampling defaults and stop ids from a generation config (greedy when do_sample is false); `model_eos` when
    the generation config names no end-of-sequence token."""
    eos = generation.eos_token_id if generation.eos_token_id is not None else model_eos
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    # only what the file sets, as vLLM reads it: transformers' own defaults (top_k 50) are not the model's
    given = generation.to_diff_dict()
    defaults = Defaults(
        temperature=float(generation.temperature or 1.0) if generation.do_sample else 0.0,
        top_p=float(generation.top_p or 1.0) if generation.do_sample else 1.0,
        max_tokens=int(generation.max_new_tokens or 256),
        top_k=int(given.get("top_k") or 0) if generation.do_sample else 0,
        min_p=float(given.get("min_p") or 0.0) if generation.do_sample else 0.0,
        repetition_penalty=float(given.get("repetition_penalty") or 1.0),
    )
    return defaults, eos_ids


@dataclass
class Loaded:
    engine: Engine
    tokenizer: Any
    defaults: Defaults
    runtime: str  # said in the ready line: "embedded" or "llama.cpp, Q4_K_M"


def build_engine(serving: ServingPlan, dtype: str = "auto", max_model_len: int | None = None,
                 max_batch_size: int = 16, threads: int = 0, log_batches: bool = False,
                 kv_cache_gib: float | None = None, prefix_caching: bool = True) -> Loaded:  # fmt: skip
    """The served model loaded, with an engine (not started) over it: transformers, or llama.cpp for a GGUF
    (`kv_cache_gib`: llama.cpp's cache, allocated up front, `prefix_caching` in it; transformers' grows as
    needed)."""
    if serving.base.kind == "gguf":
        from llmforge.serving import gguf_engine

        return gguf_engine.build(serving.base, max_model_len, max_batch_size, threads, log_batches, kv_cache_gib,
                                 prefix_caching)  # fmt: skip
    import torch

    if threads:
        torch.set_num_threads(threads)
    with stdout_to_stderr():  # stdout is for the URL alone; some libraries log there while loading
        model, tokenizer = load(serving, dtype=dtype)
    defaults, eos_ids = generation_defaults(model.generation_config, model.config.eos_token_id)
    context = model.config.max_position_embeddings
    length = min(max_model_len or context, context)
    engine = Engine(model, tokenizer, eos_ids, length, max_batch_size, log_batches=log_batches)
    return Loaded(engine, tokenizer, defaults, "embedded")


def serve(serving: ServingPlan, config: Any, fingerprint: str) -> None:
    import uvicorn

    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    runtime = "llama.cpp" if serving.base.kind == "gguf" else "the embedded CPU server"
    log(f"loading {serving.base.path} ({serving.base.kind}) for {runtime}")
    loaded = build_engine(serving, config.dtype, config.max_model_len, config.max_batch_size, config.threads,
                          log_batches=config.log_level in ("info", "debug"), kv_cache_gib=config.kv_cache_gib,
                          prefix_caching=config.prefix_caching)  # fmt: skip
    engine = loaded.engine
    url = base_url(config.host, port)

    def ready() -> None:
        names = ", ".join(m.name for m in serving.models)
        log(f"[green]serving[/] {names}{where(config.host, port)} ({loaded.runtime}, batches of up to "
            f"{config.max_batch_size}, context {engine.max_model_len}){' with an API key' if config.api_key else ''}")  # fmt: skip
        emit(url)

    state = ServerState(engine=engine, tokenizer=loaded.tokenizer, models=serving.by_name(), fingerprint=fingerprint,
                        defaults=loaded.defaults, api_key=config.api_key, on_ready=ready)  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(state),
            log_level=config.log_level,
            log_config=stderr_logging(),
            timeout_graceful_shutdown=config.graceful_timeout,
        )
    )
    # uvicorn drains the requests in flight on SIGTERM/SIGINT, then re-raises the signal into the handlers it
    # found: these make that a clean exit (status 0) after a graceful shutdown
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: received.append(number))
    server.run(sockets=[sock])
    log("server stopped" + (f" ({signal.Signals(received[0]).name})" if received else ""))
