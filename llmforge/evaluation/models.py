"""The models eval scores: resolved and checked before anything loads, and handed to lm-eval as its LM (the hf
backend, or vLLM's where it runs)."""

from __future__ import annotations

import json
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
        source = resolve_model(model, STAGE)
        check_loadable(source)
        sources.append(source)
    return sources


def check_loadable(source) -> None:
    """Cheap checks that catch a broken model before anything is loaded: its config.json (adapters: their
    adapter_config.json) parses, and every safetensors header is whole (a truncated file fails here)."""
    from safetensors import SafetensorError, safe_open

    for part in [source, source.base] if source.is_adapter else [source]:
        if part.kind == "hub":
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
    has_vllm = machine.has_vllm()
    if choice == "vllm":
        if not has_vllm:
            raise InputError("--backend vllm: vllm is not installed (pip install 'llmforge[vllm]', GPU only)")
        if not machine.has_cuda():
            raise InputError("--backend vllm needs a GPU and none is visible; use --backend hf")
        return "vllm"
    if choice == "auto" and has_vllm and machine.has_cuda():
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


def build_lm(source, backend: str, config):
    """The lm-eval LM for a model; a model that does not load is bad input, named in one line."""
    import torch
    from lm_eval.api.registry import get_model

    arguments = model_arguments(source, backend, config)
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
