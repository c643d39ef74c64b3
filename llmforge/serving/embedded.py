"""The embedded backend: load the model with transformers, batch with the engine, serve with uvicorn.

uvicorn handles SIGTERM/SIGINT: it stops accepting connections, lets the requests in flight finish (up to
`graceful_timeout`), then the lifespan stops the engine. The socket is bound before the model loads, so a port
that is taken fails at once, and `--port 0` picks a free one.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

from llmforge.console import emit, log, stdout_to_stderr
from llmforge.errors import InputError
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


def generation_defaults(model) -> tuple[Defaults, list[int]]:
    """Sampling defaults and stop ids from the artifact's generation config (greedy when do_sample is false)."""
    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else model.config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    defaults = Defaults(
        temperature=float(config.temperature or 1.0) if config.do_sample else 0.0,
        top_p=float(config.top_p or 1.0) if config.do_sample else 1.0,
        max_tokens=int(config.max_new_tokens or 256),
    )
    return defaults, eos_ids


def serve(serving: ServingPlan, config: Any, fingerprint: str) -> None:
    import torch
    import uvicorn

    from llmforge.serving.engine import Engine

    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    if config.threads:
        torch.set_num_threads(config.threads)
    log(f"loading {serving.base.path} ({serving.base.kind}) for the embedded CPU server")
    with stdout_to_stderr():  # stdout is for the URL alone; some libraries log there while loading
        model, tokenizer = load(serving, dtype=config.dtype)
    defaults, eos_ids = generation_defaults(model)
    context = model.config.max_position_embeddings
    max_model_len = min(config.max_model_len or context, context)
    engine = Engine(model, tokenizer, eos_ids, max_model_len, config.max_batch_size, log_batches=True)
    url = base_url(config.host, port)

    def ready() -> None:
        names = ", ".join(m.name for m in serving.models)
        log(f"[green]serving[/] {names}{where(config.host, port)} (embedded, batches of up to {config.max_batch_size}, "
            f"context {max_model_len}){' with an API key' if config.api_key else ''}")  # fmt: skip
        emit(url)

    state = ServerState(engine=engine, tokenizer=tokenizer, models=serving.by_name(), fingerprint=fingerprint,
                        defaults=defaults, api_key=config.api_key, on_ready=ready)  # fmt: skip
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
