"""Fused training kernels from Liger Kernel (linkedin/Liger-Kernel), used when the plan chose `kernels: liger`.

Liger's Triton kernels replace transformers' RMSNorm, SwiGLU MLP and rotary embedding, and its fused linear
cross-entropy computes the loss from the last hidden states in chunks, never holding the (tokens x vocabulary)
logits. They need a CUDA GPU and the optional `liger-kernel` package, imported only here; the plan
(llmforge.train.pretrain_plan.resolve_kernels) falls back to PyTorch's kernels where they cannot run.
"""

from __future__ import annotations

LIGER_MODEL_TYPES = ("llama", "qwen3")  # the decoders llmforge builds; Liger has a patch function for each


def apply_liger(model) -> None:
    """Swap Liger's kernels into this model instance (its forward then takes `shift_labels` and, in training,
    returns the loss without logits)."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama, apply_liger_kernel_to_qwen3

    patch = {"llama": apply_liger_kernel_to_llama, "qwen3": apply_liger_kernel_to_qwen3}[
        model.config.model_type
    ]
    patch(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=True,
    )
