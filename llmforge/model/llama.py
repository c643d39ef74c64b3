"""Llama-style decoders as transformers models, from named size presets or explicit dimensions.

RMSNorm pre-norm, SwiGLU, RoPE and grouped-query attention come with transformers' Llama; Qwen3 is the same
block with QK-norm (`arch: qwen3`). The vocabulary always comes from the tokenizer.
"""

from __future__ import annotations

from typing import Any

# hidden, layers, heads, kv heads, intermediate (SwiGLU, ~8/3 x hidden), tied embeddings
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=384, tie_word_embeddings=True),  # ~1M parameters: tests and CPU recipes
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=704, tie_word_embeddings=True),
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2048, tie_word_embeddings=True),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                 intermediate_size=2816, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, tie_word_embeddings=True),  # Llama 3.2 1B shape
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=11008, tie_word_embeddings=False),  # Llama 2 7B shape, with GQA
}  # fmt: skip


def build_config(preset: str, vocab_size: int, special_ids: dict[str, int], arch: str = "llama",
                 max_position_embeddings: int = 2048, rope_theta: float = 10000.0, **overrides: Any):  # fmt: skip
    """A transformers config for `preset`, with explicit dimensions in `overrides` taking precedence."""
    from transformers import LlamaConfig, Qwen3Config

    dims = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    cls = {"llama": LlamaConfig, "qwen3": Qwen3Config}[arch]
    config = cls(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        bos_token_id=special_ids.get("bos"),
        eos_token_id=special_ids.get("eos"),
        pad_token_id=special_ids.get("pad"),
        attention_bias=False,
        **dims,
    )
    if arch == "qwen3":
        config.head_dim = config.hidden_size // config.num_attention_heads
    return config


def build_model(config, seed: int = 0, dtype=None):
    """A randomly initialised causal LM for `config` (the seed makes it reproducible)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)


def special_ids_of(tokenizer) -> dict[str, int]:
    return {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
