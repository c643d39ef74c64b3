"""Llama-style decoders as transformers models, from named size presets or explicit dimensions.

RMSNorm pre-norm, SwiGLU, RoPE and grouped-query attention come with transformers' Llama; Qwen3 is the same
block with QK-norm (`arch: qwen3`). With `num_experts` the MLP of every layer becomes a mixture of experts: that
many SwiGLU experts of the preset's width and a router sending each token to the top `experts_per_token` of them
(softmax, then the chosen weights renormalised), as transformers' Mixtral (llama) and Qwen3-MoE (qwen3) build it,
so llama.cpp, vLLM and the hub read the result. The vocabulary always comes from the tokenizer.
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


# Switch Transformers' load-balancing coefficient (Fedus et al. 2022), OLMoE's too; transformers' Mixtral and
# Qwen3-MoE configs default to 0.001.
ROUTER_AUX_LOSS = 0.01


def build_config(preset: str, vocab_size: int, special_ids: dict[str, int], arch: str = "llama",
                 max_position_embeddings: int = 2048, rope_theta: float = 10000.0, num_experts: int = 0,
                 experts_per_token: int = 2, router_aux_loss: float = ROUTER_AUX_LOSS,
                 **overrides: Any):  # fmt: skip
    """A transformers config for `preset`, with explicit dimensions in `overrides` taking precedence; with
    `num_experts` > 0 a mixture-of-experts model whose experts each have the preset's MLP width."""
    from transformers import LlamaConfig, MixtralConfig, Qwen3Config, Qwen3MoeConfig

    dims = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    moe = {}
    if num_experts and arch == "llama":
        moe = dict(num_local_experts=num_experts, num_experts_per_tok=experts_per_token,
                   router_aux_loss_coef=router_aux_loss, sliding_window=None)  # fmt: skip
    elif num_experts:  # every layer sparse, the chosen weights renormalised as Mixtral (and Qwen3-30B-A3B) do
        moe = dict(num_experts=num_experts, num_experts_per_tok=experts_per_token,
                   moe_intermediate_size=dims["intermediate_size"], router_aux_loss_coef=router_aux_loss,
                   norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])  # fmt: skip
    cls = {("llama", False): LlamaConfig, ("qwen3", False): Qwen3Config, ("llama", True): MixtralConfig,
           ("qwen3", True): Qwen3MoeConfig}[arch, bool(num_experts)]  # fmt: skip
    config = cls(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        bos_token_id=special_ids.get("bos"),
        eos_token_id=special_ids.get("eos"),
        pad_token_id=special_ids.get("pad"),
        attention_bias=False,
        **dims,
        **moe,
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


def experts_of(config: dict[str, Any]) -> tuple[int, int]:
    """(experts per layer, experts each token is routed to) of a transformers config as a dict; (0, 0) for a dense
    model. Mixtral names the first num_local_experts, Qwen-MoE and OLMoE num_experts."""
    experts = config.get("num_local_experts") or config.get("num_experts") or 0
    return (experts, config.get("num_experts_per_tok") or 1) if experts else (0, 0)


def router_aux_coefficient(config: dict[str, Any]) -> float:
    """The load-balancing loss coefficient to train a mixture of experts with; 0 for a dense model."""
    return float(config.get("router_aux_loss_coef") or 0.0) if experts_of(config)[0] else 0.0


def special_ids_of(tokenizer) -> dict[str, int]:
    return {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
