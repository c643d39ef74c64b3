"""The models eval scores: resolved and checked before anything loads, and handed to lm-eval as its LM (the hf
backend, or vLLM's where it runs; a GGUF through `llmforge serve` on llama.cpp)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmforge import machine
from llmforge.errors import InputError

STAGE = "eval"
REPORT_KIND = "eval-report"


def open_models(models: list[str]) -> list:
    """Resolve every model argument and check it can be loaded, before any task or model is loaded."""
    from llmforge.artifacts import MANIFEST, Artifact
    from llmforge.model.loading import resolve_model

    if not models:
        raise InputError("eval needs at least one model (or --compare with eval reports)")
    sources = []
    for model in models:
        if (Path(model) / MANIFEST).is_file() and Artifact.open(model).kind == REPORT_KIND:
            raise InputError(f"{model} is an eval report, not a model: compare reports with "
                             f"`llmforge eval --compare {model} ...`")  # fmt: skip
        source = resolve_model(model, STAGE, gguf=True)
        check_loadable(source)
        sources.append(source)
    return sources


def check_loadable(source) -> None:
    """Cheap checks that catch a broken model before anything is loaded: its config.json (adapters: their
    adapter_config.json) parses, and every safetensors header is whole (a truncated file fails here)."""
    from safetensors import SafetensorError, safe_open

    for part in [source, source.base] if source.is_adapter else [source]:
        # a GGUF has no config.json: llama.cpp reads its header when it loads
        if part.kind in ("hub", "gguf"):
            continue
        directory = Path(part.path)
        config = directory / ("adapter_config.json" if part.is_adapter else "config.json")
        try:
            settings = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(
                f"{config}: the model's configuration cannot be read ({_first_line(exc)})"
            ) from None
        if not isinstance(settings, dict) or not ("model_type" in settings or "peft_type" in settings):
            raise InputError(f"{config}: not a Hugging Face model configuration (no model_type)")
        for weights in sorted(directory.glob("*.safetensors")):
            try:
                with safe_open(str(weights), "numpy"):  # reads the header only
                    pass
            except (SafetensorError, OSError) as exc:
                raise InputError(f"{weights}: the weights cannot be read, the file is truncated or corrupt "
                                 f"({_first_line(exc)})") from None  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_backend(choice: str) -> str:
    """hf or vllm. auto: vllm only where vLLM is importable here and a GPU is seen (vLLM on a CPU loads for a
    minute before scoring anything: asked for by name, with --backend vllm)."""
    from llmforge.serving import vllm_backend

    if choice == "vllm":
        found = vllm_backend.find(explicit=True)
        if isinstance(found, str):
            raise InputError(f"--backend vllm: {found}; build vLLM's environment with `make install-vllm`, or use "
                             "--backend hf")  # fmt: skip
        return "vllm"
    if choice == "auto" and machine.has_vllm() and machine.has_cuda():
        return "vllm"
    return "hf"


def model_arguments(source, backend: str, config) -> dict[str, Any]:
    """lm-eval model_args: the model path, its own tokenizer, and an adapter on its base (peft / vLLM LoRA)."""
    from llmforge.model.loading import tokenizer_dir

    base = source.base if source.is_adapter else source
    arguments: dict[str, Any] = {
        "pretrained": base.path,
        "tokenizer": tokenizer_dir(source),
        "dtype": config.dtype,
    }
    if backend == "vllm":
        arguments.update(max_model_len=config.max_length, seed=config.seed)
        if source.is_adapter:
            rank = json.loads((Path(source.path) / "adapter_config.json").read_text()).get("r", 16)
            arguments.update(lora_local_path=source.path, max_lora_rank=rank)
    else:
        arguments["max_length"] = config.max_length
        if source.is_adapter:
            arguments["peft"] = source.path
    return {key: value for key, value in arguments.items() if value is not None}


@contextmanager
def open_lm(source, backend: str, config) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The lm-eval LM for a model and its model_args, for the duration of the block. vllm: lm-eval's vLLM model
    where vLLM is importable here, else lm-eval's local-completions model against a vLLM server started under
    vLLM's own environment (and stopped after). A GGUF: local-completions against `llmforge serve` on llama.cpp."""
    if source.kind == "gguf":
        with llama_cpp_server_lm(source, config) as opened:
            yield opened
        return
    if backend == "vllm" and not machine.has_vllm():
        with vllm_server_lm(source, config) as opened:
            yield opened
        return
    settings = in_process_vllm(source, config) if backend == "vllm" else {}
    yield build_lm(source, backend, config, **settings)


def check_vllm_models(sources: list) -> None:
    """Before anything is written: what vLLM's CPU build cannot score is refused."""
    from llmforge.serving import vllm_backend

    found = vllm_backend.runtime(explicit=not machine.has_vllm())
    for source in sources:
        refuse_cpu_lora(source, found)


def refuse_cpu_lora(source, found) -> None:
    if found.cpu and source.is_adapter:
        # bench/VLLM_CPU_NOTES.md: scoring several prompts with a LoRA on vLLM's CPU build kills its engine
        raise InputError(f"{source.path}: an adapter cannot be scored with vLLM's CPU build: prompt log-likelihoods "
                         "of several prompts under a LoRA kill its engine (vllm/lora/punica_wrapper/punica_cpu.py:349 "
                         "add_lora_logits: einsum() size mismatch). Merge the adapter into its base, or use "
                         "--backend hf")  # fmt: skip


def in_process_vllm(source, config) -> dict[str, Any]:
    """lm-eval's vLLM model in this process: on vLLM's CPU build eager and in one process, dtype as served."""
    from llmforge.serving import vllm_backend

    found = vllm_backend.runtime(explicit=False)
    refuse_cpu_lora(source, found)
    base = source.base if source.is_adapter else source
    settings = {"dtype": vllm_backend.dtype_for(base.path, config.dtype, found.cpu)}
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries the report's path only
    if found.cpu:
        # no spawned engine process (and no __main__ guard); a KV cache of a set size, as serve gives it
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        settings["enforce_eager"] = True
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            settings["kv_cache_memory_bytes"] = vllm_backend.CPU_KV_CACHE_GIB * 2**30
    return settings


@contextmanager
def vllm_server_lm(source, config) -> Iterator[tuple[Any, dict[str, Any]]]:
    """lm-eval's local-completions model against a vLLM server started under vLLM's own environment."""
    from llmforge.model.loading import tokenizer_dir
    from llmforge.serving import models as serving_models
    from llmforge.serving import vllm_backend
    from llmforge.stages.serve import Config as ServeConfig

    found = vllm_backend.runtime(explicit=True)
    refuse_cpu_lora(source, found)
    serving = serving_models.plan(source.path, None, {})
    batch = config.batch_size if isinstance(config.batch_size, int) else 16
    server = ServeConfig(
        port=0, dtype=config.dtype, max_model_len=config.max_length, max_batch_size=batch, log_level="warning"
    )
    with vllm_backend.running(serving, server, source.fingerprint, found) as (url, key):
        name, tokenizer = serving.models[0].name, tokenizer_dir(source)
        length = served_context(url, key)
        arguments = completions_arguments(name, url, tokenizer, length, batch, config)
        with completions_lm(arguments, key) as lm:
            yield lm, {**arguments, "server": found.label}


@contextmanager
def llama_cpp_server_lm(source, config) -> Iterator[tuple[Any, dict[str, Any]]]:
    """lm-eval's local-completions model against `llmforge serve` of a GGUF (llama.cpp behind llmforge's API, whose
    completions echo the prompt's log-probabilities, as log-likelihood tasks need), started for the block."""
    import secrets
    import subprocess
    import sys
    import tempfile

    from llmforge.model import gguf
    from llmforge.serving import stop_server
    from llmforge.serving.models import default_name

    gguf.check_runtime()
    key = secrets.token_hex(16)
    batch = config.batch_size if isinstance(config.batch_size, int) else 16
    command = [sys.executable, "-m", "llmforge", "serve", str(source.path), "--backend", "llama.cpp", "--port", "0",
               "--max-batch-size", str(batch), "--set", "log_level=warning"]  # fmt: skip
    if config.max_length:  # none: the server takes the context the model was trained for
        command += ["--seq-len", str(config.max_length)]
    with tempfile.TemporaryDirectory(prefix="llmforge-eval-") as scratch:
        tokenizer = source.path  # a gguf artifact keeps the original tokenizer beside model.gguf
        # a .gguf file: lm-eval tokenizes with the tokenizer the server rebuilds from the file (cached: the server
        # then loads this rebuild)
        if source.artifact is None:
            from llmforge.model.importing import cached_gguf_tokenizer

            rebuilt, saved = cached_gguf_tokenizer(Path(source.path), source.fingerprint)
            if saved is None:
                rebuilt.save_pretrained(scratch)
            tokenizer = str(saved or scratch)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "LLMFORGE_API_KEY": key})  # fmt: skip
        try:
            url = process.stdout.readline().strip()  # the server's one stdout line, once it listens
            if not url.startswith("http"):
                raise InputError(f"{source.path}: `llmforge serve` on llama.cpp did not start (exit code "
                                 f"{process.wait()}; its error is above)")  # fmt: skip
            length = served_context(url, key)
            arguments = completions_arguments(default_name(source), url, tokenizer, length, batch, config)
            with completions_lm(arguments, key) as lm:
                yield lm, {**arguments, "server": "llmforge serve (llama.cpp)"}
        finally:
            stop_server(process)


def served_context(url: str, key: str) -> int:
    """The context length an OpenAI-compatible server runs its model with: `max_model_len` in its /v1/models entry
    (vLLM's field, which llmforge serve reports too)."""
    import urllib.request

    request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.load(response)["data"][0]["max_model_len"])


def completions_arguments(
    name: str, url: str, tokenizer: str, length: int, batch: int, config
) -> dict[str, Any]:
    """lm-eval's local-completions model_args for a server: token ids in (the model's own tokenizer), the seed."""
    return {"model": name, "base_url": f"{url}/completions", "tokenizer": str(tokenizer),
            "tokenizer_backend": "huggingface", "tokenized_requests": True, "max_length": length,
            "batch_size": batch, "seed": config.seed, "max_retries": 1}  # fmt: skip


@contextmanager
def completions_lm(arguments: dict[str, Any], key: str) -> Iterator[Any]:
    """lm-eval's local-completions model, with the server's API key in OPENAI_API_KEY (which it sends as the bearer
    token) for the block."""
    from lm_eval.api.registry import get_model

    previous = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = key
    try:
        yield get_model("local-completions").create_from_arg_obj({k: v for k, v in arguments.items() if v})
    finally:
        if previous is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = previous


def build_lm(source, backend: str, config, **settings):
    """The lm-eval LM for a model; a model that does not load is bad input, named in one line."""
    import torch
    from lm_eval.api.registry import get_model

    arguments = {**model_arguments(source, backend, config), **settings}
    device = config.device or ("cuda" if machine.has_cuda() else "cpu")
    try:
        lm = get_model(backend).create_from_arg_obj(
            arguments, {"batch_size": config.batch_size, "device": device}
        )
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{source.path}: cannot load the model ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    generation = getattr(getattr(lm, "model", None), "generation_config", None)
    if generation is not None:
        # Our checkpoints (and many on the hub) carry max_new_tokens, which transformers lets override the
        # max_length lm-eval computes from each task's max_gen_toks: every reply would run to 256 tokens.
        generation.max_new_tokens = None
    return lm, arguments
