"""The GPU backend: vLLM's own OpenAI server, started with the artifact's settings passed through.

vLLM brings paged attention, continuous batching, tensor parallelism, LoRA adapters and compressed-tensors /
torchao checkpoints; llmforge only builds its command line, adds the fingerprint header (a vLLM `--middleware`),
waits until it answers /health, prints the URL, and forwards SIGTERM. vLLM reads the chat template and the
generation config from the model directory itself (`--generation-config auto`).

vLLM must be installed in its own environment (`pip install 'llmforge[vllm]'`): it pins a compressed-tensors
release that llm-compressor (the `quantize` extra) cannot share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from llmforge import machine
from llmforge.console import emit, log
from llmforge.errors import InputError, LLMForgeError
from llmforge.serving.embedded import base_url
from llmforge.serving.models import ServingPlan, adapter_rank
from llmforge.serving.tools import directory_format

FINGERPRINT_ENV = "LLMFORGE_FINGERPRINT"
FINGERPRINT_HEADER = "x-llmforge-fingerprint"


def unavailable_reason() -> str | None:
    """Why the vllm backend cannot run here (None when vLLM is importable and a CUDA GPU is visible)."""
    if not machine.has_vllm():
        return "vLLM is not installed"
    return None if machine.has_cuda() else "no CUDA GPU is visible"


def available() -> bool:
    return unavailable_reason() is None


def command(serving: ServingPlan, config: Any, port: int) -> list[str]:
    """vLLM's server command line for this plan."""
    base = serving.base_model
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(serving.base.path), "--served-model-name", base.name,
            "--host", config.host, "--port", str(port),
            "--tensor-parallel-size", str(config.tensor_parallel_size),
            "--gpu-memory-utilization", str(config.gpu_memory_utilization),
            "--dtype", config.dtype, "--generation-config", "auto",
            "--middleware", f"{__name__}.fingerprint_header"]  # fmt: skip
    if config.max_model_len:
        argv += ["--max-model-len", str(config.max_model_len)]
    if config.max_batch_size:
        argv += ["--max-num-seqs", str(config.max_batch_size)]
    if config.api_key:
        argv += ["--api-key", config.api_key]
    tool_format = directory_format(serving.base.path)
    if (
        tool_format
    ):  # the parser named as vLLM names it: tool calls come back as the embedded server reads them
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", tool_format]
    adapters = serving.adapters
    base_template = _base_template(serving)
    own = [a.name for a in adapters if a.chat_template not in (None, base_template)]
    if own:
        raise InputError(f"adapter {own[0]} has a chat template of its own, and vLLM renders every adapter with the "
                         "base model's: serve it with --backend embedded, or merge it (--merge) and serve that")  # fmt: skip
    if adapters:
        argv += ["--enable-lora", "--max-loras", str(len(adapters)),
                 "--max-lora-rank", str(max(adapter_rank(a.source) for a in adapters)), "--lora-modules"]  # fmt: skip
        argv += [f"{a.name}={a.source.path}" for a in adapters]
    return argv


def _base_template(serving: ServingPlan) -> str | None:
    file = Path(serving.base.path) / "chat_template.jinja"
    return file.read_text() if file.is_file() else None


async def fingerprint_header(request, call_next):
    """vLLM middleware: tag each response with the served artifact's fingerprint."""
    response = await call_next(request)
    response.headers[FINGERPRINT_HEADER] = os.environ.get(FINGERPRINT_ENV, "")
    return response


def serve(serving: ServingPlan, config: Any, fingerprint: str) -> None:
    reason = unavailable_reason()
    if reason:
        raise InputError(f"the vllm backend needs vLLM and a CUDA GPU ({reason}): install `llmforge[vllm]` in an "
                         "environment without the `quantize` extra, on a GPU machine (or use --backend embedded)")  # fmt: skip
    from llmforge.serving.embedded import bind

    sock = bind(config.host, config.port)  # pick (or check) the port, then hand it to vLLM
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, FINGERPRINT_ENV: fingerprint}
    argv = command(serving, config, port)
    log(f"starting vLLM: {' '.join(a if a != config.api_key else '***' for a in argv[1:])}")
    process = subprocess.Popen(argv, env=env)
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    url = base_url(config.host, port)
    try:
        while process.poll() is None:
            if _healthy(url):
                log(f"[green]serving[/] {', '.join(m.name for m in serving.models)} at {url} (vLLM)")
                emit(url)
                break
            time.sleep(1)
        code = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        code = process.wait()
    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise LLMForgeError(f"vLLM exited with status {code}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
