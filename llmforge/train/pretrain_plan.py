"""What `llmforge pretrain` works out before any training, as one typed Plan: every input and setting checked, the
model's config, the processes and how the batch splits over them, the steps, the DeepSpeed config and the cost
estimate. `--dry-run` prints it and stops; a run turns it into the RunSpec every training process reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmforge import machine
from llmforge.errors import InputError
from llmforge.model.kernels import FUSED_LOSS, LIGER_MODEL_TYPES, canonical_kernels, liger_kernels

if TYPE_CHECKING:
    from llmforge.artifacts import Artifact
    from llmforge.model.estimate import Estimate
    from llmforge.model.loading import ModelSource
    from llmforge.stages.pretrain import Config
    from llmforge.train.loop import RunSpec

STAGE = "pretrain"
# Beyond about 4 passes over the same tokens, repeated data is worth much less than fresh data (Muennighoff 2023).
USEFUL_PASSES = 4


@dataclass
class Plan:
    """Everything checked and computed from the inputs and the Config before training."""

    tokens: Artifact  # the tokens artifact trained on
    model_config: Any  # the transformers config (PretrainedConfig) of the model to train
    init: ModelSource | None  # continued pretraining: the model whose weights start the run
    init_context: int | None  # ...and its context length before this run
    init_rope_theta: float | None  # ...and its RoPE base before this run (model.rope_theta may change it)
    world_size: int  # training processes in all
    accumulation: int  # micro-batches per process per optimizer step
    steps: int  # optimizer steps
    warmup: int  # warmup steps
    precision: str  # fp32 | bf16
    attention: str  # sdpa | flex_attention | flash_attention_2 | eager
    compile: bool  # torch.compile the model and the loss
    kernels: str  # none, liger (all three) or the Liger kernels, comma-separated (llmforge.model.kernels)
    reasons: dict[str, str]  # why attention, compile and kernels are what they are (shown in the plan)
    deepspeed: dict[str, Any]  # the engine's DeepSpeed config (the run adds the monitor sections)
    available_tokens: int  # tokens in the train split's seq_len windows
    estimate: Estimate  # parameters, FLOPs, memory per device
    peak_flops: float | None  # per device, for MFU; None = not known (CPU, an unknown GPU)

    @property
    def zero(self) -> int:
        return self.deepspeed.get("zero_optimization", {}).get("stage", 0)

    def run_spec(self, config: Config, work: Path, monitors: dict[str, Any]) -> RunSpec:
        """What every training process reads: the settings and what this plan computed (absolute paths)."""
        from llmforge.train.loop import RunSpec

        init = self.init
        init_from = (
            None if init is None else init.path if init.kind == "hub" else str(Path(init.path).resolve())
        )
        return RunSpec(config=config, tokens_dir=str(Path(self.tokens.path).resolve()), work_dir=str(work.resolve()),
                       model_config=self.model_config.to_dict(), init_from=init_from, world_size=self.world_size,
                       accumulation=self.accumulation, steps=self.steps, warmup=self.warmup, precision=self.precision,
                       attention=self.attention, compile=self.compile, kernels=self.kernels,
                       deepspeed={**self.deepspeed, **monitors},
                       flops_per_token=self.estimate.flops_per_token, peak_flops=self.peak_flops)  # fmt: skip


def make_plan(tokens: str | Path, config: Config) -> Plan:
    """Check every input and setting, and work out the run (no training, nothing written)."""
    from llmforge.model.estimate import ModelShape, device_peak_flops, estimate
    from llmforge.train import launch
    from llmforge.train.data import PackedWindows

    artifact, shards, tokenizer = _tokens_input(tokens)
    source, context, theta = None, None, None
    if config.init_from:
        source, hf_config, context, theta = init_model(config, artifact, shards)
    else:
        hf_config = model_config(config, tokenizer)
    dist = config.distributed
    if dist.hostfile is None and dist.nproc > 1 and 0 < machine.gpu_count() < dist.nproc:
        raise InputError(f"--nproc {dist.nproc}: this machine has {machine.gpu_count()} GPUs")
    world = launch.world_size(dist.nproc, dist.hostfile)
    accumulation = accumulation_steps(config, world)
    precision = resolve_precision(config.precision)
    ds_config = deepspeed_settings(config, accumulation, precision)
    windows = len(PackedWindows(artifact.path, "train", config.seq_len))
    if windows == 0:
        raise InputError(f"{artifact.path}: no train shard holds seq_len + 1 = {config.seq_len + 1} tokens; "
                         "lower seq_len or encode more text")  # fmt: skip
    available = windows * config.seq_len
    train_tokens = config.train_tokens or available
    steps = train_tokens // config.batch_tokens
    if steps < 1:
        raise InputError(f"{train_tokens:,} training tokens make less than one batch of {config.batch_tokens:,}; "
                         "lower batch_tokens or add data")  # fmt: skip
    shape = ModelShape.from_hf_config(hf_config.to_dict())
    peak = config.logging.peak_tflops * 1e12 if config.logging.peak_tflops else None
    if peak is None and machine.has_cuda():
        peak = device_peak_flops(machine.gpu_name())
    zero = ds_config.get("zero_optimization", {}).get("stage", 0)
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device")
    numbers = estimate(shape=shape, tokens=steps * config.batch_tokens, devices=world, zero=zero,
                       precision="bf16-autocast" if precision == "bf16" else "fp32", offload=offload,
                       seq_len=config.seq_len, micro_batch=config.micro_batch_size,
                       checkpointing=config.activation_checkpointing)  # fmt: skip
    warmup = config.optim.warmup_steps
    if warmup is None:
        warmup = max(1, round(config.optim.warmup_fraction * steps)) if config.optim.warmup_fraction else 0
    attention, attention_why = resolve_attention(config.model.attention, config.document_masking)
    kernels, kernels_why = resolve_kernels(config.kernels, zero, hf_config.model_type, config.compile,
                                           z_loss=config.stability.z_loss > 0)  # fmt: skip
    compiled, compile_why = resolve_compile(config.compile, zero, kernels)
    if compiled and kernels != "none":
        kernels_why += "; under torch.compile Liger's RMSNorm and SwiGLU measured no faster than without"
    return Plan(tokens=artifact, model_config=hf_config, init=source, init_context=context,
                init_rope_theta=theta, world_size=world,
                accumulation=accumulation, steps=steps, warmup=min(warmup, steps), precision=precision,
                attention=attention, compile=compiled, kernels=kernels,
                reasons={"attention": attention_why, "compile": compile_why, "kernels": kernels_why},
                deepspeed=ds_config, available_tokens=available, estimate=numbers, peak_flops=peak)  # fmt: skip


def print_plan(plan: Plan, config: Config) -> None:
    from rich.table import Table

    from llmforge.console import console, warn
    from llmforge.model.estimate import (
        describe_compile_time,
        describe_measured_mfu,
        human_bytes,
        human_count,
        measured_mfu,
        mfu_setting,
    )
    from llmforge.model.llama import router_aux_coefficient

    numbers = plan.estimate
    hf = plan.model_config
    passes = numbers.tokens / plan.available_tokens
    table = Table(title="pretraining plan", show_header=False, title_justify="left")
    table.add_column(style="cyan")
    table.add_column()
    init = plan.init
    theta = rope_theta_of(hf)
    if init is not None:
        context = plan.init_context
        extended = hf.max_position_embeddings != context
        longer = f"; context {context} -> {hf.max_position_embeddings}" if extended else ""
        if plan.init_rope_theta is not None and theta != plan.init_rope_theta:
            longer += f"; RoPE base {plan.init_rope_theta:,g} -> {theta:,g}"
        table.add_row("init from", f"{init.path} ({init.kind}, {init.fingerprint[:12]}): its weights{longer}")
    name = hf.model_type if init is not None else f"{config.model.arch} {config.model.preset}"
    table.add_row("model", f"{name}: {hf.num_hidden_layers} layers, "
                  f"hidden {hf.hidden_size}, {hf.num_attention_heads} heads / "
                  f"{getattr(hf, 'num_key_value_heads', None) or hf.num_attention_heads} kv, "
                  f"{moe_description(hf)}, vocab {hf.vocab_size}"
                  f"{f', rope theta {theta:g}' if theta else ''}"
                  f"{', tied embeddings' if hf.tie_word_embeddings else ''}")  # fmt: skip
    active = numbers.active_parameters
    table.add_row(
        "parameters",
        human_count(numbers.parameters)
        + (f" ({human_count(active)} active per token)" if active != numbers.parameters else ""),
    )
    table.add_row(
        "tokens",
        f"{human_count(numbers.tokens)} ({passes:.2f} passes over {human_count(plan.available_tokens)})",
    )
    table.add_row("tokens per parameter", f"{numbers.tokens_per_parameter:.3g} (Chinchilla-optimal ~20: "
                  f"{human_count(numbers.chinchilla_tokens)} tokens)")  # fmt: skip
    table.add_row(
        "training FLOPs (6ND)",
        f"{numbers.training_flops:.3g}"
        + (" (N: the active parameters)" if active != numbers.parameters else ""),
    )
    table.add_row("batch", f"{config.batch_tokens:,} tokens = seq {config.seq_len} x micro-batch "
                  f"{config.micro_batch_size} x accumulation {plan.accumulation} x {plan.world_size} processes")  # fmt: skip
    table.add_row("steps", f"{plan.steps:,} ({config.optim.schedule}, peak lr {config.optim.lr:g}, "
                  f"warmup {plan.warmup})")  # fmt: skip
    terms = [f"{config.stability.z_loss:g} x log(Z)^2 (z-loss)"] if config.stability.z_loss else []
    if router_aux := router_aux_coefficient(hf.to_dict()):
        terms.append(f"{router_aux:g} x the router's load-balancing loss")
    if terms:
        table.add_row("loss", " + ".join(["cross-entropy", *terms]))
    zero = numbers.zero
    memory = numbers.memory_per_device[zero]
    offload = f", offload {numbers.offload}" if numbers.offload else ""
    table.add_row("precision / ZeRO", f"{plan.precision}, ZeRO-{zero}{offload}")
    table.add_row("attention", f"{plan.attention} ({plan.reasons['attention']})")
    preset = None if plan.init is not None else config.model.preset
    gpu = machine.gpu_name()
    compile_time = describe_compile_time(preset, gpu) if plan.compile else ""
    table.add_row("torch.compile", f"{'on' if plan.compile else 'off'} ({plan.reasons['compile']})"
                  f"{f'; {compile_time}' if compile_time else ''}")  # fmt: skip
    table.add_row("kernels", f"{plan.kernels} ({plan.reasons['kernels']})")
    table.add_row("memory per device", f"{human_bytes(memory['total'])} for weights, gradients and Adam states "
                  f"+ ~{human_bytes(numbers.activation_bytes)} activations per micro-batch")  # fmt: skip
    if plan.peak_flops:
        setting = mfu_setting(plan.attention, plan.compile, plan.kernels, config.document_masking)
        table.add_row("MFU to expect", describe_measured_mfu(preset, gpu, setting))
        # the lowest run measured: a plan should not overpromise
        mfu = min(measured_mfu(preset, gpu).get(setting, (0.4,)))
        hours = numbers.training_flops / (plan.peak_flops * plan.world_size * mfu) / 3600
        table.add_row(f"time at {mfu:.0%} MFU", f"{hours:.3g} h on {plan.world_size} devices (measured after the "
                      "first steps)")  # fmt: skip
    else:
        table.add_row("time", "measured after the first steps (MFU: n/a without a known GPU peak)")
    console.print(table)
    if passes > USEFUL_PASSES:
        warn(f"{passes:.1f} passes over the same tokens; beyond ~{USEFUL_PASSES}, repeated data adds little")


# ---------------------------------------------------------------------------------------------------------------
# The checks and computations the plan is made of


def _tokens_input(path: str | Path):
    """The tokens artifact, its shards and its tokenizer, checked against each other."""
    from llmforge.artifacts import open_artifact
    from llmforge.data.shards import TokenShards
    from llmforge.data.tokenizer import load_tokenizer, tokenizer_fingerprint

    artifact = open_artifact(path, STAGE, ["tokens"])
    shards = TokenShards(artifact.path)
    if not (shards.tokenizer_path / "tokenizer.json").is_file():
        raise InputError(f"{shards.tokenizer_path}: missing; the tokens artifact must carry its tokenizer")
    recorded = artifact.extra.get("tokenizer_fingerprint")
    if recorded and recorded != tokenizer_fingerprint(shards.tokenizer_path):
        raise InputError(f"{shards.tokenizer_path}: changed since `llmforge {artifact.stage}` wrote it "
                         "(tokenizer fingerprint differs from the manifest)")  # fmt: skip
    for split in shards.split_names():  # sizes, offsets and id range of every shard, before any training
        shards.shards(split, check_ids=True)
    tokenizer = load_tokenizer(shards.tokenizer_path)
    if len(tokenizer) != shards.vocab_size:
        raise InputError(f"{artifact.path}/shards.json: vocab_size {shards.vocab_size} but its tokenizer has "
                         f"{len(tokenizer)} tokens")  # fmt: skip
    return artifact, shards, tokenizer


# Settings that shape the model; an init model brings its own, so they are refused beside --init-from. Its RoPE
# base may change (model.rope_theta): no weight depends on it, and raising it is how long-context training starts.
ARCHITECTURE_SETTINGS = ("preset", "arch", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                         "intermediate_size", "tie_embeddings", "num_experts", "experts_per_token")  # fmt: skip
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def moe_description(hf_config) -> str:
    """The MLP part of the plan's model line: its width, and for a mixture of experts how many and how routed."""
    from llmforge.model.llama import experts_of

    experts, per_token = experts_of(hf_config.to_dict())
    if not experts:
        return f"ffn {hf_config.intermediate_size}"
    width = getattr(hf_config, "moe_intermediate_size", None) or hf_config.intermediate_size
    return f"{experts} experts of ffn {width}, top-{per_token} routing"


def rope_theta_of(hf_config) -> float | None:
    """A transformers config's RoPE base (transformers 5 keeps it in `rope_parameters`)."""
    parameters = getattr(hf_config, "rope_parameters", None) or {}
    return parameters.get("rope_theta") or getattr(hf_config, "rope_theta", None)


def init_model(config: Config, artifact, shards) -> tuple[Any, Any, int, float | None]:
    """The model to continue pretraining (`init_from`), its config for this run, and the context and RoPE base it
    had, checked against the tokens' tokenizer."""
    from transformers import AutoConfig

    from llmforge.console import warn
    from llmforge.data.tokenizer import tokenizer_fingerprint
    from llmforge.model.llama import experts_of
    from llmforge.model.loading import resolve_model

    given = sorted(f"model.{name}" for name in config.model.model_fields_set & set(ARCHITECTURE_SETTINGS))
    if given:
        raise InputError(f"init_from {config.init_from}: the architecture comes from that model; drop "
                         f"{', '.join(given)}")  # fmt: skip
    source = resolve_model(config.init_from, STAGE)
    if source.kind not in ("model", "hf-dir", "hub") or source.is_adapter:
        raise InputError(f"init_from {config.init_from}: pretrain continues a whole model, this is "
                         f"{'an adapter (merge it first)' if source.is_adapter else 'a ' + source.kind}")  # fmt: skip
    ours = tokenizer_fingerprint(shards.tokenizer_path)
    theirs = source.tokenizer_fingerprint
    encoded_with = {entry.get("fingerprint") for entry in artifact.manifest.get("inputs", [])}
    if theirs != ours and not (theirs is None and source.fingerprint in encoded_with):
        raise InputError(f"{artifact.path}: not encoded with the tokenizer of {config.init_from} (tokenizer "
                         f"fingerprint {ours[:12]}, the model's {(theirs or 'unknown')[:12]}); encode with "
                         f"`llmforge tokenize encode --model {config.init_from}`")  # fmt: skip
    try:
        hf_config = AutoConfig.from_pretrained(source.path)
    except (OSError, ValueError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{source.path}/config.json: cannot be read ({detail})") from None
    missing = [key for key in SHAPE_KEYS if getattr(hf_config, key, None) is None]
    if missing:
        raise InputError(f"{source.path}/config.json: {hf_config.model_type} has no {', '.join(missing)}; pretrain "
                         "continues Llama-style decoders")  # fmt: skip
    vocab = shards.vocab_size
    if hf_config.vocab_size < vocab:
        raise InputError(f"{source.path}/config.json: vocab_size {hf_config.vocab_size} is smaller than the "
                         f"tokenizer's {vocab} tokens")  # fmt: skip
    if config.model.vocab_size is not None and config.model.vocab_size != hf_config.vocab_size:
        raise InputError(f"model.vocab_size {config.model.vocab_size} does not match {config.init_from}'s "
                         f"{hf_config.vocab_size}; leave it unset")  # fmt: skip
    # a longer seq_len than the model was trained at extends its context (RoPE needs no new weights; the plan says so)
    context = hf_config.max_position_embeddings or 0
    if context and config.seq_len > context and "seq_len" not in config.model_fields_set:
        warn(f"seq_len {config.seq_len} (the default) is longer than {config.init_from}'s context {context}: "
             f"the context is extended; pass --seq-len {context} to keep it")  # fmt: skip
    hf_config.max_position_embeddings = max(context, config.seq_len)
    hf_config.use_cache = True
    theta = rope_theta_of(hf_config)
    if "rope_theta" in config.model.model_fields_set:
        parameters = getattr(hf_config, "rope_parameters", None)
        # none to change, or one per layer type (Gemma 3)
        if theta is None or (parameters and "rope_theta" not in parameters):
            raise InputError(f"model.rope_theta: {config.init_from}'s RoPE settings ({parameters}) have no single "
                             "base to change")  # fmt: skip
        if parameters:
            hf_config.rope_parameters = {**parameters, "rope_theta": config.model.rope_theta}
        else:
            hf_config.rope_theta = config.model.rope_theta
    if (
        config.model.router_aux_loss is not None
    ):  # a training setting, kept in the config the model is saved with
        if not experts_of(hf_config.to_dict())[0]:
            raise InputError(f"model.router_aux_loss: {config.init_from} is a dense {hf_config.model_type}; it has "
                             "no router")  # fmt: skip
        hf_config.router_aux_loss_coef = config.model.router_aux_loss
    if "lr" not in config.optim.model_fields_set:
        trained_at = (source.artifact.config.get("optim", {}).get("lr")
                      if source.artifact is not None and source.artifact.stage == STAGE else None)  # fmt: skip
        known = f"; {config.init_from} was pretrained at a peak of {trained_at:g}" if trained_at else ""
        warn(f"lr {config.optim.lr:g} is the from-scratch default{known}: continued pretraining usually peaks "
             "lower (a tenth of the original is common); --lr to choose")  # fmt: skip
    return source, hf_config, context, theta


def model_config(config: Config, tokenizer) -> Any:
    from llmforge.model.llama import build_config, special_ids_of

    vocab = len(tokenizer)
    if config.model.vocab_size is not None and config.model.vocab_size != vocab:
        raise InputError(f"model.vocab_size {config.model.vocab_size} does not match the tokenizer's vocabulary "
                         f"of {vocab} tokens; leave it unset to use the tokenizer's")  # fmt: skip
    m = config.model
    if m.router_aux_loss is not None and not m.num_experts:
        raise InputError("model.router_aux_loss: a dense model has no router; set model.num_experts too")
    moe = {} if m.router_aux_loss is None else {"router_aux_loss": m.router_aux_loss}
    hf_config = build_config(m.preset, vocab, special_ids_of(tokenizer), arch=m.arch,
                             max_position_embeddings=config.seq_len, rope_theta=m.rope_theta,
                             num_experts=m.num_experts, experts_per_token=m.experts_per_token, **moe,
                             hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                             num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                             intermediate_size=m.intermediate_size, tie_word_embeddings=m.tie_embeddings)  # fmt: skip
    if hf_config.hidden_size % hf_config.num_attention_heads:
        raise InputError(f"model: hidden_size {hf_config.hidden_size} is not divisible by num_heads "
                         f"{hf_config.num_attention_heads}")  # fmt: skip
    if hf_config.num_attention_heads % hf_config.num_key_value_heads:
        raise InputError(f"model: num_heads {hf_config.num_attention_heads} is not a multiple of num_kv_heads "
                         f"{hf_config.num_key_value_heads}")  # fmt: skip
    return hf_config


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if machine.bf16_supported() else "fp32"
    return precision


def resolve_attention(attention: str, document_masking: bool) -> tuple[str, str]:
    """The attention implementation, and why. On CPU, SDPA: FlexAttention has no backward pass there (torch 2.13)
    and its compiled forward was slower than SDPA on small models after a long compile (bench/RESULTS.md)."""
    from llmforge.model.attention import has_flex_attention

    gpu = machine.has_cuda()
    if attention == "flex_attention" and not (gpu and has_flex_attention()):
        raise InputError("model.attention flex_attention: PyTorch's FlexAttention trains on CUDA GPUs only (it has "
                         "no backward pass on CPU); use sdpa or auto")  # fmt: skip
    if attention == "flash_attention_2" and not machine.has_flash_attention():
        raise InputError(
            "model.attention flash_attention_2: needs the flash-attn package and a CUDA GPU; use auto"
        )
    if attention != "auto":
        return attention, "as set"
    if machine.has_flash_attention():
        return "flash_attention_2", "auto: flash-attn's varlen kernel, documents as separate sequences"
    if gpu and document_masking and has_flex_attention():
        return "flex_attention", "auto: document masks as FlexAttention block masks, no seq x seq mask"
    if gpu:
        return "sdpa", "auto: SDPA's causal FlashAttention kernel (no document masks to apply)"
    return "sdpa", "auto: SDPA on CPU (FlexAttention has no backward pass there)"


# Measured on an H200 (bench/RESULTS.md; torch 2.11, liger-kernel 0.8.5): Liger's fused linear cross-entropy fails
# under torch.compile (a fake-tensor error tracing its addmm); its RMSNorm and SwiGLU compile but do not pay there
# (125m: 0.93x and 0.99x of compiled without them). Compiled without Liger was the fastest (125m 33.1-36.0% MFU vs
# 20.8-21.8% eager with all three). Eager, all three gained 1.15-1.20x and halved memory; each alone 1.10x
# (rms_norm), 1.01x (swiglu), 1.03x (the fused loss, and a third less memory).
LIGER_UNDER_COMPILE = ("Liger's fused linear cross-entropy fails under torch.compile (measured: torch 2.11, "
                       "liger-kernel 0.8.5; bench/RESULTS.md)")  # fmt: skip


def resolve_compile(compile: bool | None, zero: int, kernels: str = "none") -> tuple[bool, str]:
    """torch.compile on or off, and why: on by default where it was measured to pay (125m on an H100: 1.63x with
    SDPA; on an H200 with FlexAttention: 2.0x, 36-53% MFU for 125m-1b)."""
    if compile is not None:
        return compile, "as set"
    if not machine.has_cuda():
        return False, "auto: off on CPU (the compile time outweighs any gain on short CPU runs)"
    if zero == 3:
        return False, "auto: off with ZeRO-3 (not measured); --compile to try it"
    if FUSED_LOSS in liger_kernels(kernels):
        return False, f"auto: off with kernels {kernels} ({LIGER_UNDER_COMPILE})"
    return True, "auto: on GPUs (step 1 pays for compiling; the log and metrics.jsonl say how long)"


def resolve_kernels(kernels: str, zero: int, model_type: str, compile: bool | None = None,
                    z_loss: bool = False) -> tuple[str, str]:  # fmt: skip
    """The Liger kernels to use (none, liger = all three, or a comma-separated subset), and why. They are Triton
    (CUDA GPUs); the fused linear cross-entropy reads the output weights directly, which ZeRO-3 has sharded away,
    so it is left out there. Asked for where they cannot run, the run falls back to PyTorch's kernels and the plan
    (printed once per run) says why. `auto` takes all three only for runs set not to compile: compiled without
    them measured faster, and the fused loss fails under torch.compile."""
    from llmforge.console import warn

    if kernels == "none":
        return "none", "as set"
    missing = None
    if not machine.has_cuda():
        missing = "Liger's Triton kernels need a CUDA GPU"
    elif not machine.has_package("liger_kernel"):
        missing = "liger-kernel is not installed (pip install liger-kernel)"
    elif model_type not in LIGER_MODEL_TYPES:
        missing = f"Liger is wired for {', '.join(LIGER_MODEL_TYPES)}, not {model_type}"
    elif kernels == "auto" and zero == 3:
        missing = "not measured with ZeRO-3"
    elif kernels == "auto" and compile is not False:
        return "none", ("auto: torch.compile instead (compiled without Liger measured faster than eager with it, "
                        "and its fused loss fails under torch.compile)")  # fmt: skip
    if missing:
        if kernels != "auto":
            warn(f"kernels {kernels}: {missing}; falling back to PyTorch's kernels")
        return "none", f"{kernels}: {missing}; PyTorch's kernels"
    chosen = liger_kernels("liger" if kernels == "auto" else kernels)
    why = f"{kernels}: Liger's {', '.join(chosen)}"
    if FUSED_LOSS in chosen and (zero == 3 or z_loss):
        chosen = tuple(k for k in chosen if k != FUSED_LOSS)
        left_out = (f"{FUSED_LOSS} left out with ZeRO-3 (it reads the sharded output weights)" if zero == 3
                    else f"{FUSED_LOSS} left out with z_loss (it computes no z-loss here)")  # fmt: skip
        warn(f"kernels {kernels}: {left_out}")
        why = f"{kernels}: " + (
            f"Liger's {', '.join(chosen)}; {left_out}" if chosen else f"{left_out}; PyTorch's"
        )
    if FUSED_LOSS in chosen and compile:
        raise InputError(f"kernels {kernels} with compile: {LIGER_UNDER_COMPILE}; choose one (compiled without "
                         f"Liger was the faster), or leave {FUSED_LOSS} out")  # fmt: skip
    return (canonical_kernels(",".join(chosen)) if chosen else "none"), why


def accumulation_steps(config: Config, world: int) -> int:
    per_pass = config.seq_len * config.micro_batch_size * world
    if config.batch_tokens % per_pass:
        raise InputError(
            f"batch_tokens {config.batch_tokens:,} is not a multiple of seq_len x micro_batch_size x processes = "
            f"{config.seq_len} x {config.micro_batch_size} x {world} = {per_pass:,}; choose a batch_tokens that is"
        )
    return config.batch_tokens // per_pass


def deepspeed_settings(config: Config, accumulation: int, precision: str) -> dict[str, Any]:
    from llmforge.train.deepspeed import NO_TIMERS, deepspeed_config, fill_auto, load_deepspeed_json

    computed = {"train_micro_batch_size_per_gpu": config.micro_batch_size,
                "gradient_accumulation_steps": accumulation, "gradient_clipping": config.optim.grad_clip}  # fmt: skip
    dist = config.distributed
    if dist.deepspeed:
        user = load_deepspeed_json(dist.deepspeed)
        for key in ("optimizer", "scheduler"):
            if key in user:
                raise InputError(f"{dist.deepspeed}: remove the '{key}' section; llmforge sets the optimizer and the "
                                 "schedule from its optim.* settings")  # fmt: skip
        user.pop("train_batch_size", None)  # implied by the micro batch, accumulation and processes
        settings = {"timers": NO_TIMERS, **fill_auto(user, computed, source=dist.deepspeed)}
    else:
        settings = deepspeed_config(dist.zero, dist.offload, micro_batch_size=config.micro_batch_size,
                                    gradient_accumulation_steps=accumulation, gradient_clipping=config.optim.grad_clip,
                                    precision="bf16-autocast" if precision == "bf16" else "fp32")  # fmt: skip
    return settings
