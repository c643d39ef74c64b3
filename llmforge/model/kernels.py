"""Fused training kernels from Liger Kernel (linkedin/Liger-Kernel), used when the plan chose `kernels: liger`.

Liger's Triton kernels replace transformers' RMSNorm and SwiGLU MLP, and its fused linear cross-entropy computes
the loss from the last hidden states in chunks, never holding the (tokens x vocabulary) logits. They need a CUDA
GPU and the optional `liger-kernel` package, imported only here; the plan
(llmforge.train.pretrain_plan.resolve_kernels) falls back to PyTorch's kernels where they cannot run.
"""

from __future__ import annotations

import importlib

LIGER_MODEL_TYPES = ("llama", "qwen3")  # the decoders llmforge builds; Liger has a patch function for each


def apply_liger(model) -> None:
    """Swap Liger's kernels into this model instance: its norms and MLPs, and its forward, which then takes
    `shift_labels` and, in training, returns the loss without logits.

    Liger also replaces transformers' classes process-wide (every model built afterwards would get its kernels);
    they are put back, so the change stays on this instance. Its RoPE exists only as such a process-wide swap,
    so RoPE stays transformers' (torch.compile fuses it anyway).
    """
    from liger_kernel.transformers import apply_liger_kernel_to_llama, apply_liger_kernel_to_qwen3

    model_type = model.config.model_type
    patch = {"llama": apply_liger_kernel_to_llama, "qwen3": apply_liger_kernel_to_qwen3}[model_type]
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    before = dict(vars(modeling))
    patch(model=model, rope=False, rms_norm=True, swiglu=True, cross_entropy=False,
          fused_linear_cross_entropy=True)  # fmt: skip
    for name, value in before.items():
        if getattr(modeling, name) is not value:
            setattr(modeling, name, value)
