"""Back-of-the-envelope numbers for a training run, before spending anything on it.

Parameters from the model's shape; training FLOPs 6·N·D (forward 2·N·D plus backward 4·N·D); compute-optimal data
20 tokens per parameter (Chinchilla, Hoffmann et al. 2022); memory of weights, gradients and Adam states per device
for each ZeRO stage (Rajbhandari et al. 2020); KV-cache size for inference; GPU-hours and cost at a given MFU.

Sizes are decimal (1 GB = 1e9 bytes), the unit of the papers and of GPU spec sheets. Pure arithmetic, no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmforge.errors import InputError

CHINCHILLA_TOKENS_PER_PARAM = 20
GB = 1e9

# Bytes per parameter for (weights, gradients, optimizer states) when training with Adam.
# mixed (bf16/fp16): 2-byte weights and grads, fp32 master copy + two moments = 12; fp32: 4 + 4 + 8 (two moments).
# bf16-autocast keeps fp32 weights (torch autocast casts per op), so it costs what fp32 does.
TRAINING_BYTES: dict[str, tuple[int, int, int]] = {
    "bf16": (2, 2, 12),
    "fp16": (2, 2, 12),
    "bf16-autocast": (4, 4, 8),
    "fp32": (4, 4, 8),
}
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}

# Dense (no sparsity) peak tensor-core TFLOP/s in bf16, from the vendors' spec sheets. Matched against the
# device name as torch reports it; the first key found in the name wins, so longer names come first.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "GB200": 2500.0,
    "B200": 2250.0,
    "GH200": 989.0,
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,  # fp16: V100 has no bf16
    "MI300X": 1307.0,
    "MI250X": 383.0,
}


# Model FLOPs utilisation measured with `llmforge pretrain` (bf16 autocast, seq 2048, document masking on, one GPU,
# micro-batch 16, 8 for the 1b), by preset and GPU, every run (seeds, leases); bench/RESULTS.md has them. Nothing
# else is measured: a preset or GPU not listed here is "not measured" until bench/bench_gpu.sh runs on it.
# Keys: (preset, GPU name key, setting as mfu_setting() names it).
COMPILED_FLEX = "torch.compile, FlexAttention block masks"
EAGER_FLEX = "eager, FlexAttention block masks"
MEASURED_MFU: dict[tuple[str, str, str], tuple[float, ...]] = {
    # 2026-11-23, H100 80GB HBM3 (SXM), torch 2.11, DeepSpeed ZeRO-2 on one process
    ("125m", "H100", "eager, SDPA with a dense document mask"): (0.159,),
    ("125m", "H100", "torch.compile, SDPA with a dense document mask"): (0.258,),
    # 2026-12-05, H100 80GB HBM3 (SXM), torch 2.11, ZeRO-0: bench/bench_gpu.sh's sweep, seeds 0-2
    ("125m", "H100", COMPILED_FLEX): (0.365, 0.365, 0.364),
    ("350m", "H100", COMPILED_FLEX): (0.423, 0.424, 0.422),
    ("1b", "H100", COMPILED_FLEX): (0.520, 0.520, 0.520),
    # 2026-12-04, H200 (141 GB), torch 2.11, ZeRO-0: bench/bench_pretrain.py --sweep on two leases (the first
    # figure is the first lease's; the rest seeds 0-2 on the second)
    ("125m", "H200", COMPILED_FLEX): (0.360, 0.331, 0.331, 0.334),
    ("350m", "H200", COMPILED_FLEX): (0.430, 0.420, 0.421, 0.424),
    ("1b", "H200", COMPILED_FLEX): (0.527,),
    ("125m", "H200", "eager, SDPA with a dense document mask"): (0.169,),
    ("350m", "H200", "eager, SDPA with a dense document mask"): (0.209,),
    ("1b", "H200", "eager, SDPA with a dense document mask"): (0.325,),
    ("125m", "H200", EAGER_FLEX): (0.184, 0.181),
    ("350m", "H200", EAGER_FLEX): (0.240,),
    ("125m", "H200", f"{EAGER_FLEX}, Liger kernels"): (0.218, 0.208),
    ("350m", "H200", f"{EAGER_FLEX}, Liger kernels"): (0.289,),
    ("125m", "H200", f"{EAGER_FLEX}, Liger rms_norm"): (0.199,),
    ("125m", "H200", f"{EAGER_FLEX}, Liger swiglu"): (0.183,),
    ("125m", "H200", f"{EAGER_FLEX}, Liger fused_linear_cross_entropy"): (0.186,),
    ("125m", "H200", f"{COMPILED_FLEX}, Liger rms_norm"): (0.308,),
    ("125m", "H200", f"{COMPILED_FLEX}, Liger swiglu"): (0.328,),
}
MEASURED_WHERE = "bench/RESULTS.md; seq 2048, vocabulary 32,768"
# Step 1's time beyond a steady step with torch.compile on (compiling, and FlexAttention's kernels), in seconds,
# by (preset, GPU name key); the same runs as MEASURED_MFU (H100: SDPA, then FlexAttention; H200: FlexAttention)
MEASURED_COMPILE_SECONDS: dict[tuple[str, str], tuple[float, ...]] = {
    ("125m", "H100"): (45.0, 37.5),
    ("350m", "H100"): (48.9,),
    ("1b", "H100"): (33.4,),
    ("125m", "H200"): (34.2, 53.1),  # a fresh compile on each lease (the seeds after the first hit its cache)
    ("350m", "H200"): (50.3, 67.6),
    ("1b", "H200"): (56.2,),
}
ATTENTION_NAMES = {"flex_attention": "FlexAttention block masks", "flash_attention_2": "flash-attn varlen",
                   "eager": "eager attention"}  # fmt: skip


def mfu_setting(attention: str, compiled: bool, kernels: str, document_masking: bool = True) -> str:
    """A run's settings as MEASURED_MFU names them: 'torch.compile, FlexAttention block masks'."""
    names = {
        **ATTENTION_NAMES,
        "sdpa": "SDPA with a dense document mask" if document_masking else "SDPA, causal",
    }
    parts = ["torch.compile" if compiled else "eager", names[attention]]
    liger = {"none": [], "liger": ["Liger kernels"]}.get(kernels, [f"Liger {kernels.replace(',', ' + ')}"])
    return ", ".join(parts + liger)


def device_key(name: str) -> str | None:
    """The PEAK_BF16_TFLOPS key a device name matches ('NVIDIA H100 80GB HBM3' -> 'H100'), or None."""
    for key in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return key
    return None


def measured_mfu(preset: str | None, gpu: str | None) -> dict[str, tuple[float, ...]]:
    """The MFU of every run measured for this preset on this GPU, by setting ({} when not measured)."""
    key = device_key(gpu) if gpu else None
    if preset is None or key is None:
        return {}
    return {
        setting: runs for (p, device, setting), runs in MEASURED_MFU.items() if p == preset and device == key
    }


def spread(runs: tuple[float, ...]) -> str:
    """'42.0%' for one run, '42.0-43.0% (4 runs)' for several."""
    if len(runs) == 1:
        return f"{runs[0]:.1%}"
    return f"{min(runs) * 100:.1f}-{max(runs):.1%} ({len(runs)} runs)"


def describe_compile_time(preset: str | None, gpu: str | None) -> str:
    """What compiling cost step 1 for this preset on this GPU, where measured ('' otherwise)."""
    key = device_key(gpu) if gpu else None
    runs = MEASURED_COMPILE_SECONDS.get((preset, key)) if preset and key else None
    if not runs:
        return ""
    seconds = f"{min(runs):.0f}-{max(runs):.0f} s" if len(runs) > 1 else f"{runs[0]:.0f} s"
    return f"step 1 compiles: {seconds} measured for {preset} on {key}"


def describe_measured_mfu(preset: str | None, gpu: str | None, setting: str | None = None) -> str:
    """One line for a plan or an estimate: the measured MFU with what it was measured on, or 'not measured'.
    With a run's setting, its own figure comes first."""
    measured = measured_mfu(preset, gpu)
    what = f"{preset or 'this model'} on {device_key(gpu) or gpu or 'this device'}"
    if not measured:
        return f"not measured for {what} (bench/bench_gpu.sh measures it)"
    if setting in measured:
        others = "; ".join(f"{spread(runs)} {name}" for name, runs in measured.items() if name != setting)
        return (f"{spread(measured[setting])} measured for {what} with these settings ({setting})"
                f"{f'; other settings: {others}' if others else ''} ({MEASURED_WHERE})")  # fmt: skip
    figures = "; ".join(f"{spread(runs)} {name}" for name, runs in measured.items())
    unmeasured = f"not measured with these settings ({setting}); " if setting else ""
    return f"{unmeasured}measured for {what}: {figures} ({MEASURED_WHERE})"


def device_peak_flops(name: str) -> float | None:
    """The bf16 dense peak FLOP/s of a GPU named like torch.cuda.get_device_name() says, or None if unknown."""
    key = device_key(name)
    return PEAK_BF16_TFLOPS[key] * 1e12 if key else None


@dataclass
class ModelShape:
    """The dimensions that decide parameters, FLOPs and KV-cache size of a Llama-style decoder; with `num_experts`
    every layer's MLP is a mixture of that many SwiGLU experts of `intermediate_size`, `experts_per_token` of which
    each token passes through (shared experts and dense layers between sparse ones, as some MoE models have, are
    not counted)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    tie_embeddings: bool = True
    head_dim: int | None = None
    qk_norm: bool = False  # Qwen3: RMSNorm on queries and keys
    num_experts: int = 0  # 0: a dense MLP
    experts_per_token: int = 0

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads

    def preset(self) -> str | None:
        """The size preset with these dimensions (any vocabulary), or None."""
        from llmforge.model.llama import PRESETS

        for name in PRESETS:
            shape = ModelShape.from_preset(name, self.vocab_size, qk_norm=self.qk_norm)
            if shape == self:
                return name
        return None

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelShape:
        from llmforge.model.llama import experts_of

        heads = config["num_attention_heads"]
        experts, per_token = experts_of(config)
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            intermediate_size=(experts and config.get("moe_intermediate_size"))
            or config["intermediate_size"],
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            qk_norm=config.get("model_type") in ("qwen3", "qwen3_moe"),
            num_experts=experts,
            experts_per_token=per_token,
        )

    @classmethod
    def from_preset(cls, preset: str, vocab_size: int, **overrides: Any) -> ModelShape:
        from llmforge.model.llama import PRESETS

        if preset not in PRESETS:
            raise InputError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}")
        dims = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(
            vocab_size=vocab_size,
            hidden_size=dims["hidden_size"],
            num_layers=dims["num_hidden_layers"],
            num_heads=dims["num_attention_heads"],
            num_kv_heads=dims["num_key_value_heads"],
            intermediate_size=dims["intermediate_size"],
            tie_embeddings=dims["tie_word_embeddings"],
            qk_norm=bool(overrides.get("qk_norm")),
            num_experts=dims.get("num_local_experts") or 0,
            experts_per_token=(dims.get("num_experts_per_tok") or 2) if dims.get("num_local_experts") else 0,
        )

    @classmethod
    def from_directory(cls, path: str | Path) -> ModelShape:
        """A Hugging Face model directory (or llmforge model artifact): its config.json."""
        config_path = Path(path) / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: not a Hugging Face model directory (no config.json)") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{config_path}: not valid JSON ({exc.msg})") from None
        try:
            return cls.from_hf_config(config)
        except KeyError as exc:
            raise InputError(
                f"{config_path}: no {exc.args[0]}; not a decoder config llmforge can size"
            ) from None

    @property
    def attention_width(self) -> int:
        return self.num_heads * self.head_dim

    def layer_parameters(self, active: bool = False) -> int:
        """A layer's weights: all of them, or (`active`) those one token is multiplied by (its experts only)."""
        kv_width = self.num_kv_heads * self.head_dim
        attention = (
            self.hidden_size * self.attention_width * 2 + self.hidden_size * kv_width * 2
        )  # q, o, k, v
        mlp = 3 * self.hidden_size * self.intermediate_size  # SwiGLU: gate, up, down
        if self.num_experts:  # the router's linear layer, and the experts (all, or the token's)
            mlp = self.hidden_size * self.num_experts + mlp * (
                self.experts_per_token if active else self.num_experts
            )
        norms = 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)
        return attention + mlp + norms

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    def parameters(self, active: bool = False) -> int:
        """Every weight, or (`active`) those one token uses: a mixture of experts' chosen experts only."""
        head = 0 if self.tie_embeddings else self.embedding_parameters()
        layers = self.num_layers * self.layer_parameters(active)
        return self.embedding_parameters() + head + layers + self.hidden_size

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x every weight a token is multiplied by (all layers and the output
        projection; the input embedding is a lookup), plus attention scores and mixing over the context:
        12 x layers x attention width x context (PaLM, Chowdhery et al. 2022, appendix B). A mixture of experts
        counts the experts a token is routed to, not the others."""
        matmul_weights = self.num_layers * self.layer_parameters(active=True) + self.embedding_parameters()
        return 6.0 * matmul_weights + 12.0 * self.num_layers * self.attention_width * seq_len

    def kv_cache_bytes(self, seq_len: int, batch: int = 1, bytes_per_value: float = 2) -> float:
        """Keys and values of every layer for `batch` sequences of `seq_len` tokens."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * seq_len * batch * bytes_per_value

    def activation_bytes(self, seq_len: int, micro_batch: int, checkpointing: bool = False) -> float:
        """Approximate activation memory of one micro-batch in 16-bit with a fused (flash/SDPA) attention kernel:
        about 34 bytes x hidden per token per layer (Korthikanti et al. 2022, without the quadratic term); with
        activation checkpointing only each layer's input (2 bytes x hidden) plus one layer being recomputed."""
        per_layer = 34 * self.hidden_size * seq_len * micro_batch
        logits = 6 * self.vocab_size * seq_len * micro_batch  # bf16 logits and their fp32 copy for the loss
        if checkpointing:
            return self.num_layers * 2 * self.hidden_size * seq_len * micro_batch + per_layer + logits
        return self.num_layers * per_layer + logits


def training_memory(params: float, zero: int, devices: int, precision: str = "bf16",
                    offload: str | None = None) -> dict[str, float]:  # fmt: skip
    """Bytes per device for weights, gradients and optimizer states under ZeRO stage `zero` over `devices`.

    ZeRO-1 shards the optimizer states, ZeRO-2 also the gradients, ZeRO-3 also the weights. Offload moves the
    optimizer states (and with ZeRO-3 the weights) to CPU memory: they are reported under `cpu_*`.
    """
    if precision not in TRAINING_BYTES:
        raise InputError(f"precision {precision!r}: one of {', '.join(TRAINING_BYTES)}")
    if zero not in (0, 1, 2, 3):
        raise InputError(f"ZeRO stage {zero}: one of 0, 1, 2, 3")
    weight_b, grad_b, optim_b = TRAINING_BYTES[precision]
    weights = params * weight_b / (devices if zero >= 3 else 1)
    grads = params * grad_b / (devices if zero >= 2 else 1)
    optimizer = params * optim_b / (devices if zero >= 1 else 1)
    memory = {"weights": weights, "gradients": grads, "optimizer": optimizer}
    cpu = {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0}
    if offload == "cpu" and zero >= 1:
        cpu["optimizer"], memory["optimizer"] = memory["optimizer"], 0.0
        if zero == 3:
            cpu["weights"], memory["weights"] = memory["weights"], 0.0
    memory["total"] = memory["weights"] + memory["gradients"] + memory["optimizer"]
    memory.update({f"cpu_{k}": v for k, v in cpu.items() if v})
    return memory


def training_flops(params: float, tokens: float) -> float:
    return 6.0 * params * tokens


def chinchilla_tokens(params: float) -> float:
    return CHINCHILLA_TOKENS_PER_PARAM * params


def gpu_hours(flops: float, peak_flops: float, mfu: float) -> float:
    return flops / (peak_flops * mfu) / 3600.0


_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str | float | int, what: str = "count") -> float:
    """'7B' -> 7e9, '140b' -> 1.4e11, '1.5e12' -> 1.5e12, '350M' -> 3.5e8."""
    if isinstance(text, int | float):
        return float(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*", str(text), re.IGNORECASE)
    if not match:
        raise InputError(f"{what} {text!r}: expected a number like 7B, 350M, 1.5e12")
    return float(match.group(1)) * _SUFFIXES.get(match.group(2).lower(), 1.0)


@dataclass
class Estimate:
    """Everything `llmforge estimate` and the pretrain plan report, in plain numbers."""

    parameters: float
    active_parameters: float  # per token: all of them but for a mixture of experts
    tokens: float
    chinchilla_tokens: float
    tokens_per_parameter: float
    training_flops: float
    precision: str
    devices: int
    zero: int
    offload: str | None
    memory_per_device: dict[int, dict[str, float]]  # ZeRO stage -> bytes
    weights_bytes: dict[str, float]  # inference weights by format
    flops_per_token: float | None = None
    kv_cache_bytes: float | None = None
    activation_bytes: float | None = None
    seq_len: int | None = None
    peak_flops: float | None = None
    mfu: float | None = None
    gpu_hours: float | None = None
    price_per_gpu_hour: float | None = None
    cost: float | None = None
    preset: str | None = None  # the size preset the shape is (any vocabulary)
    gpu: str | None = None
    # the MFU of each run measured for the preset on the GPU, by setting
    measured_mfu: dict[str, tuple[float, ...]] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory_per_device"] = {str(k): v for k, v in self.memory_per_device.items()}
        return data


def estimate(params: float | None = None, shape: ModelShape | None = None, tokens: float | None = None,
             devices: int = 1, zero: int = 0, precision: str = "bf16", offload: str | None = None,
             seq_len: int = 2048, micro_batch: int = 1, checkpointing: bool = False, gpu: str | None = None,
             peak_tflops: float | None = None, mfu: float = 0.4, price_per_gpu_hour: float | None = None,
             kv_batch: int = 1) -> Estimate:  # fmt: skip
    """The numbers for a model of `params` parameters (or of `shape`) trained on `tokens` tokens
    (default: the Chinchilla-optimal 20 per parameter). A mixture of experts' FLOPs count its active parameters,
    its memory and the tokens per parameter all of them."""
    if params is None:
        if shape is None:
            raise InputError(
                "estimate needs a parameter count, a preset, explicit dimensions or a model directory"
            )
        params = float(shape.parameters())
        active = float(shape.parameters(active=True))
    else:
        active = params
    if devices < 1:
        raise InputError(f"devices {devices}: must be at least 1")
    if not 0 < mfu <= 1:
        raise InputError(f"MFU {mfu}: must be a fraction in (0, 1]")
    optimal = chinchilla_tokens(params)
    tokens = optimal if tokens is None else tokens
    flops = training_flops(active, tokens)
    peak = peak_tflops * 1e12 if peak_tflops else (device_peak_flops(gpu) if gpu else None)
    if gpu and peak is None:
        known = ", ".join(PEAK_BF16_TFLOPS)
        raise InputError(f"GPU {gpu!r}: peak FLOP/s unknown (known: {known}); give --peak-tflops")
    hours = gpu_hours(flops, peak, mfu) if peak else None
    result = Estimate(
        parameters=params,
        active_parameters=active,
        tokens=tokens,
        chinchilla_tokens=optimal,
        tokens_per_parameter=tokens / params,
        training_flops=flops,
        precision=precision,
        devices=devices,
        zero=zero,
        offload=offload,
        memory_per_device={
            stage: training_memory(params, stage, devices, precision, offload) for stage in range(4)
        },
        weights_bytes={fmt: params * size for fmt, size in WEIGHT_BYTES.items()},
        seq_len=seq_len,
        peak_flops=peak,
        mfu=mfu if peak else None,
        gpu_hours=hours,
        price_per_gpu_hour=price_per_gpu_hour,
        cost=hours * price_per_gpu_hour if hours is not None and price_per_gpu_hour is not None else None,
        preset=shape.preset() if shape is not None else None,
        gpu=gpu,
    )
    if gpu:
        result.measured_mfu = measured_mfu(result.preset, gpu)
    if shape is not None:
        result.flops_per_token = shape.flops_per_token(seq_len)
        result.kv_cache_bytes = shape.kv_cache_bytes(seq_len, kv_batch)
        result.activation_bytes = shape.activation_bytes(seq_len, micro_batch, checkpointing)
    return result


def human_bytes(value: float) -> str:
    for limit, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= limit:
            return f"{value / limit:.3g} {unit}"
    return f"{value:.0f} B"


def human_count(value: float) -> str:
    for limit, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{unit}"
    return f"{value:.3g}"


def report_rows(result: Estimate) -> list[tuple[str, str]]:
    """The estimate as (what, value) rows for a table."""
    rows = [
        ("parameters", human_count(result.parameters)),
        *(
            [("active parameters per token", human_count(result.active_parameters))]
            if result.active_parameters != result.parameters
            else []
        ),
        ("training tokens", human_count(result.tokens)),
        ("Chinchilla-optimal tokens (20/param)", human_count(result.chinchilla_tokens)),
        ("tokens per parameter", f"{result.tokens_per_parameter:.3g} (Chinchilla ~20)"),
        ("training FLOPs (6ND)", f"{result.training_flops:.3g}"),
    ]
    if result.flops_per_token:
        rows.append(
            (f"FLOPs per token (seq {result.seq_len}, with attention)", f"{result.flops_per_token:.3g}")
        )
    offload = f", offload {result.offload}" if result.offload and result.offload != "none" else ""
    for stage, memory in result.memory_per_device.items():
        marker = " <" if stage == result.zero else ""
        detail = ", ".join(f"{k} {human_bytes(memory[k])}" for k in ("weights", "gradients", "optimizer"))
        cpu = sum(v for k, v in memory.items() if k.startswith("cpu_"))
        cpu_text = f"; CPU {human_bytes(cpu)}" if cpu else ""
        rows.append((
            f"ZeRO-{stage} per device ({result.devices} x, {result.precision}{offload}){marker}",
            f"{human_bytes(memory['total'])} ({detail}{cpu_text})",
        ))  # fmt: skip
    if result.activation_bytes is not None:
        rows.append(("activations per micro-batch (approx.)", human_bytes(result.activation_bytes)))
    rows.append(
        ("weights for inference", ", ".join(f"{k} {human_bytes(v)}" for k, v in result.weights_bytes.items()))
    )
    if result.kv_cache_bytes is not None:
        rows.append(
            (f"KV cache (bf16, {result.seq_len} tokens, per sequence)", human_bytes(result.kv_cache_bytes))
        )
    if result.gpu:
        rows.append(("MFU to expect", describe_measured_mfu(result.preset, result.gpu)))
    if result.gpu_hours is not None:
        rows.append((f"GPU-hours at {result.mfu:.0%} MFU (--mfu) of {result.peak_flops / 1e12:.0f} TFLOP/s",
                     f"{result.gpu_hours:,.0f} ({result.gpu_hours / result.devices:,.1f} h on {result.devices})"))  # fmt: skip
    if result.cost is not None:
        rows.append((f"cost at {result.price_per_gpu_hour:g}/GPU-hour", f"{result.cost:,.0f}"))
    return rows


def resolve_shape(model: str | None, vocab_size: int = 32000, hidden_size: int | None = None,
                  num_layers: int | None = None, num_heads: int | None = None, num_kv_heads: int | None = None,
                  intermediate_size: int | None = None, tie_embeddings: bool | None = None,
                  qk_norm: bool = False, num_experts: int | None = None,
                  experts_per_token: int | None = None) -> ModelShape | None:  # fmt: skip
    """The shape named by `model` (a preset, a model artifact or a Hugging Face directory) with explicit
    dimensions overriding it, or built from explicit dimensions alone; None when nothing describes a shape."""
    from llmforge.model.llama import PRESETS

    dims = {"hidden_size": hidden_size, "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads, "intermediate_size": intermediate_size,
            "tie_word_embeddings": tie_embeddings, "num_local_experts": num_experts,
            "num_experts_per_tok": experts_per_token}  # fmt: skip
    given = {k: v for k, v in dims.items() if v is not None}
    if experts_per_token and not (num_experts or (model and Path(model).is_dir())):
        raise InputError("--experts-per-token needs --experts (a mixture of experts)")
    if model is not None and Path(model).is_dir():
        shape = ModelShape.from_directory(model)
        if given:
            base = _hf_dims(shape)
            if "hidden_size" in given or "num_attention_heads" in given:
                base.pop("head_dim")
            shape = ModelShape.from_hf_config({**base, **given})
        return shape
    if model is not None:
        if model not in PRESETS:
            raise InputError(f"{model}: neither a preset ({', '.join(PRESETS)}) nor a model directory")
        return ModelShape.from_preset(model, vocab_size, **given, qk_norm=qk_norm)
    if not given:
        return None
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [key for key in required if key not in given]
    if missing:
        raise InputError(f"explicit dimensions need {', '.join(required)}; missing {', '.join(missing)}")
    return ModelShape(vocab_size=vocab_size, hidden_size=given["hidden_size"], num_layers=given["num_hidden_layers"],
                      num_heads=given["num_attention_heads"],
                      num_kv_heads=given.get("num_key_value_heads", given["num_attention_heads"]),
                      intermediate_size=given["intermediate_size"],
                      tie_embeddings=given.get("tie_word_embeddings", False), qk_norm=qk_norm,
                      num_experts=given.get("num_local_experts", 0),
                      experts_per_token=given.get("num_experts_per_tok", 2) if given.get("num_local_experts") else 0)  # fmt: skip


def _hf_dims(shape: ModelShape) -> dict[str, Any]:
    return {"vocab_size": shape.vocab_size, "hidden_size": shape.hidden_size, "num_hidden_layers": shape.num_layers,
            "num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
            "intermediate_size": shape.intermediate_size, "tie_word_embeddings": shape.tie_embeddings,
            "head_dim": shape.head_dim, "model_type": "qwen3" if shape.qk_norm else "llama",
            "num_local_experts": shape.num_experts, "num_experts_per_tok": shape.experts_per_token}  # fmt: skip
