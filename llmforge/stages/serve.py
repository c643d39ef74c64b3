"""Serve a model, adapter, quantized-model or gguf artifact (or a .gguf file) behind an OpenAI-compatible HTTP API.

/v1/chat/completions (with SSE streaming), /v1/completions, /v1/models and /health, using the artifact's own
chat template and generation config. vLLM serves it (`--backend vllm`, on a GPU or with vLLM's CPU build; vLLM's
own environment, `make install-vllm`, is found by itself) or llmforge's embedded server does (continuous batching
over transformers, or over llama.cpp for a GGUF); `auto` picks llama.cpp for a GGUF, else vLLM when it is
importable in llmforge's own environment or $LLMFORGE_VLLM_PYTHON names one. Once the server listens, its base URL
(`http://HOST:PORT/v1`) is the one line on stdout, so `url=$(llmforge serve M --port 0 | head -1)` captures it.
Unlike the other stages it writes no artifact; it runs until SIGTERM or Ctrl-C, finishing the requests in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import Field

from llmforge.config import StageConfig
from llmforge.errors import InputError
from llmforge.options import Flag, stage_command

STAGE = "serve"


class Config(StageConfig):
    backend: Literal["auto", "embedded", "vllm", "llama.cpp"] = Field(
        "auto",
        description="vllm: vLLM's server (GPU, or vLLM's CPU build; runs under $LLMFORGE_VLLM_PYTHON, this Python, or "
        ".venv-vllm of the checkout or working directory); embedded: llmforge's own server over transformers; "
        "llama.cpp: llmforge's own server over llama.cpp, for a gguf artifact or .gguf file; auto: llama.cpp for a GGUF, "
        "else vLLM when importable here or $LLMFORGE_VLLM_PYTHON is set, else the embedded server",
    )
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes the server to the network")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on; 0 picks a free one")
    api_key: str | None = Field(
        None, description="Bearer token every /v1 request must send (also read from LLMFORGE_API_KEY)"
    )
    served_model_name: str | None = Field(
        None,
        description="Name clients put in 'model'; none = the artifact's directory name (a .gguf file's name)",
    )
    adapters: list[str] = Field(
        default_factory=list,
        description="More LoRA adapters on the same base, NAME=PATH, selected by 'model'",
    )
    dtype: str = Field("auto", description="Weights dtype: auto (as stored), float32, bfloat16, float16")
    max_model_len: int | None = Field(
        None, gt=0, description="Context length (prompt + answer); none = the model's own"
    )
    max_batch_size: int = Field(16, gt=0, description="Sequences generated together at most; more wait")
    threads: int = Field(
        0, ge=0, description="Embedded and llama.cpp: CPU threads; 0 = torch's default (the cores)"
    )
    graceful_timeout: float = Field(
        30.0, ge=0, description="Seconds requests in flight get to finish after SIGTERM"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Server log level (info logs every request and batch)"
    )
    tensor_parallel_size: int = Field(1, gt=0, description="vLLM: GPUs to shard the model across")
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="vLLM on a GPU: share of GPU memory for weights and KV cache",
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="vLLM and llama.cpp: GiB for the KV cache. vLLM (--kv-cache-memory-bytes): none = on a GPU what "
        "gpu_memory_utilization leaves, on a CPU $VLLM_CPU_KVCACHE_SPACE or 4 (vLLM's own CPU default reserves 92% "
        "of the machine's memory and refuses to start where that much is not free). llama.cpp: none = one context "
        "length of tokens, shared by the running requests; a request starts once its prompt and max_tokens fit",
    )
    prefix_caching: bool = Field(
        True,
        description="Keep a finished request's KV cache and reuse it for a prompt that starts the same way (the "
        "next turn of a conversation, a shared system prompt): llama.cpp (kept until its room is needed) and vLLM "
        "(its automatic prefix caching); the embedded transformers server has none",
    )


def run(model: str | Path, config: Config | None = None) -> None:
    """Serve until stopped. Bad inputs (not a model, an adapter on another base) fail before anything loads."""
    from llmforge.console import warn
    from llmforge.serving import models as serving_models
    from llmforge.serving import vllm_backend
    from llmforge.serving.engine import limit_openmp_spinning

    limit_openmp_spinning()
    config = config or Config()
    serving = serving_models.plan(
        model, config.served_model_name, serving_models.parse_adapters(config.adapters)
    )
    fingerprint = serving.models[0].fingerprint  # what the argument names (an adapter: the adapter)
    if not config.api_key and not is_loopback(config.host):
        warn(f"serving on {config.host} without an API key: anyone who can reach this machine can use the model "
             "(set --api-key or LLMFORGE_API_KEY)")  # fmt: skip
    backend = choose_backend(config, gguf=serving.base.kind == "gguf")
    if backend == "vllm":
        vllm_backend.serve(serving, config, fingerprint)
    else:
        from llmforge.serving import embedded

        embedded.serve(serving, config, fingerprint)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine (a name is resolved as the socket would be)."""
    import ipaddress
    import socket

    try:
        return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback
                   for info in socket.getaddrinfo(host, None))  # fmt: skip
    except (OSError, ValueError):
        return False


def choose_backend(config: Config, gguf: bool = False) -> str:
    """The backend `config` asks for; auto says why it falls back, and vLLM-only settings the embedded server
    would not honour are named rather than dropped silently. A GGUF runs on llama.cpp, and only a GGUF does."""
    from llmforge.console import log, warn
    from llmforge.serving import vllm_backend

    backend = config.backend
    if gguf:
        if backend not in ("auto", "llama.cpp"):
            raise InputError(f"--backend {backend} serves transformers models, and this is a GGUF: serve it with "
                             "--backend llama.cpp (auto does), or serve the model it was quantized from")  # fmt: skip
        from llmforge.model.gguf import check_runtime
        from llmforge.serving.gguf_engine import check_batch_size

        check_runtime()
        check_batch_size(config.max_batch_size)
        backend = "llama.cpp"
        log("backend: llama.cpp (a GGUF)")
        if config.dtype != "auto":
            warn(f"dtype {config.dtype}: a GGUF keeps the types it was written with; ignored")
    elif backend == "llama.cpp":
        raise InputError("--backend llama.cpp serves a GGUF (a gguf artifact or a .gguf file): make one with `llmforge quantize MODEL --data "
                         "DATA -o OUT --method gguf-q4_k_m` (or another gguf-* method)")  # fmt: skip
    if backend == "auto":
        reason = vllm_backend.unavailable_reason()
        backend = "embedded" if reason else "vllm"
        log(f"backend: the embedded CPU server ({reason})" if reason else "backend: vLLM")
    if backend in ("embedded", "llama.cpp"):
        defaults = Config()
        shown = {
            "tensor_parallel_size": "--tensor-parallel-size",
            "gpu_memory_utilization": "gpu_memory_utilization",
            "kv_cache_gib": "--kv-cache-gib",
        }
        if backend == "llama.cpp":
            del shown["kv_cache_gib"]  # llama.cpp's cache is sized by it too
        ignored = [f"{shown[name]} {getattr(config, name)}" for name in shown
                   if getattr(config, name) != getattr(defaults, name)]  # fmt: skip
        if ignored:
            warn(f"{', '.join(ignored)}: vLLM settings, ignored by the {backend} server")
    return backend


FLAGS = (
    Flag("host"),
    Flag("port"),
    Flag("api_key", envvar="LLMFORGE_API_KEY"),
    Flag("backend"),
    Flag("served_model_name"),
    Flag("adapters", "--adapter"),
    Flag("max_model_len", "--seq-len", "--max-model-len"),
    Flag("max_batch_size"),
    Flag("tensor_parallel_size"),
    Flag("kv_cache_gib"),
    Flag("prefix_caching", "--prefix-caching/--no-prefix-caching"),
)


@stage_command(FLAGS)
def command(
    model: Annotated[
        str,
        typer.Argument(
            help="A model, adapter, quantized-model or gguf artifact, a Hugging Face directory, a .gguf file, or a Hub "
            "id (org/name; org/name:TAG for a repository's GGUF of that type, as llama.cpp's -hf)."
        ),
    ],
    config: Config,
) -> None:
    run(model, config)
