"""What this machine offers, asked in one place: CUDA GPUs, bf16, FlashAttention, vLLM, CPU cores.

Every "GPU or CPU?" decision in llmforge goes through these functions, so there is one place to change for a new
accelerator. torch is imported on first use, never at import time: `llmforge --help` stays fast.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def has_package(name: str) -> bool:
    """The package is installed (found without importing it)."""
    return importlib.util.find_spec(name) is not None


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_name() -> str | None:
    """The first GPU's name (as torch.cuda.get_device_name says it), or None without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def process_device() -> str:
    """The device this process trains on: its GPU (torchrun's LOCAL_RANK names it) or the CPU."""
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if has_cuda() else "cpu"


def bf16_supported() -> bool:
    """A CUDA GPU that computes in bf16 (on CPU we train in fp32: bf16 autocast there is slower, not faster)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def has_flash_attention() -> bool:
    """FlashAttention-2 can run: the flash_attn package and a CUDA GPU."""
    return has_package("flash_attn") and has_cuda()


def has_vllm() -> bool:
    return has_package("vllm")


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask under taskset or a container, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def empty_cache() -> None:
    """Give cached GPU memory back after a model is dropped (nothing to do on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe() -> str:
    """'2x NVIDIA H100 80GB HBM3' or 'cpu (16 cores)', for manifests. Does not import torch: a stage that never
    needed it (the data stages) is described by its CPU count."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} cores)"
