"""Fused training kernels from Liger Kernel (linkedin/Liger-Kernel), used when the plan chose some of them.

Liger's Triton kernels replace transformers' RMSNorm (`rms_norm`) and SwiGLU MLP (`swiglu`), and its fused linear
cross-entropy (`fused_linear_cross_entropy`) computes the loss from the last hidden states in chunks, never holding
the (tokens x vocabulary) logits. The `kernels` setting takes `liger` (all three) or a comma-separated list of
these names, so each can be measured on its own. They need a CUDA GPU and the optional `liger-kernel` package,
imported only in apply_liger; the plan (llmforge.train.pretrain_plan.resolve_kernels) falls back to PyTorch's
kernels where they cannot run.
"""

from __future__ import annotations

import importlib

LIGER_MODEL_TYPES = ("llama", "qwen3")  # the decoders llmforge builds; Liger has a patch function for each
LIGER_KERNELS = ("rms_norm", "swiglu", "fused_linear_cross_entropy")  # Liger's own names for them
FUSED_LOSS = "fused_linear_cross_entropy"


def canonical_kernels(value: str) -> str:
    """`auto`, `none`, `liger` (all of LIGER_KERNELS) or a comma-separated subset in LIGER_KERNELS' order; raises
    ValueError naming the unknown kernel."""
    value = value.strip()
    if value in ("auto", "none", "liger"):
        return value
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(LIGER_KERNELS))
    if unknown or not names:
        raise ValueError(f"unknown kernel {', '.join(unknown) or repr(value)}: use auto, none, liger (all three) or "
                         f"a comma-separated list of {', '.join(LIGER_KERNELS)}")  # fmt: skip
    return "liger" if names == set(LIGER_KERNELS) else ",".join(k for k in LIGER_KERNELS if k in names)


def liger_kernels(kernels: str) -> tuple[str, ...]:
    """The Liger kernels a resolved `kernels` value ("none", "liger" or a subset) switches on."""
    if kernels == "none":
        return ()
    return LIGER_KERNELS if kernels == "liger" else tuple(kernels.split(","))


def apply_liger(model, kernels: str = "liger") -> None:
    """Swap the chosen Liger kernels into this model instance: its norms, its MLPs, and (fused loss) its forward,
    which then takes `shift_labels` and, in training, returns the loss without logits.

    Liger also replaces transformers' classes process-wide (every model built afterwards would get its kernels);
    they are put back, so the change stays on this instance. Its RoPE exists only as such a process-wide swap,
    so RoPE stays transformers' (torch.compile fuses it anyway).
    """
    from liger_kernel.transformers import apply_liger_kernel_to_llama, apply_liger_kernel_to_qwen3

    chosen = liger_kernels(kernels)
    model_type = model.config.model_type
    patch = {"llama": apply_liger_kernel_to_llama, "qwen3": apply_liger_kernel_to_qwen3}[model_type]
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    before = dict(vars(modeling))
    patch(model=model, rope=False, cross_entropy=False, **{name: name in chosen for name in LIGER_KERNELS})
    for name, value in before.items():
        if getattr(modeling, name) is not value:
            setattr(modeling, name, value)
