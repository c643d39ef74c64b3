"""Pretrain a Llama-style model on token shards; writes a model artifact (a Hugging Face directory).

The model comes from a size preset (`tiny` for CPU tests up to `1b` and `7b` shapes) or explicit dimensions, with
the tokenizer's vocabulary, or with `--init-from MODEL` (continued pretraining) from an existing model's config and
weights, on tokens encoded with its own tokenizer. AdamW with warmup + cosine or WSD, a batch set in tokens and reached by gradient
accumulation, DeepSpeed ZeRO 0-3 (`--zero 2 --offload cpu` or `--deepspeed ds.json`), one process by default or
`--nproc N` / `--hostfile FILE` under torchrun / the deepspeed launcher. Checkpoints in OUT/checkpoints resume an
interrupted run automatically; loss spikes and NaNs rewind to the last checkpoint and skip the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import Field, field_validator

from llmforge import machine
from llmforge.config import StageConfig, runtime_field
from llmforge.errors import InputError
from llmforge.options import Flag, stage_command
from llmforge.train.stats import TrainingSummary

STAGE = "pretrain"
# Beyond about 4 passes over the same tokens, repeated data is worth much less than fresh data (Muennighoff 2023).
USEFUL_PASSES = 4


class ModelConfig(StageConfig):
    preset: str = Field("125m", description="Size preset: tiny (~1M, tests), small, 125m, 350m, 1b, 7b")
    arch: Literal["llama", "qwen3"] = Field(
        "llama", description="llama, or qwen3 (the same block with QK-norm)"
    )
    hidden_size: int | None = Field(None, gt=0, description="Width; none = the preset's")
    num_layers: int | None = Field(None, gt=0, description="Decoder layers; none = the preset's")
    num_heads: int | None = Field(None, gt=0, description="Attention heads; none = the preset's")
    num_kv_heads: int | None = Field(
        None, gt=0, description="Key/value heads (grouped-query attention); none = the preset's"
    )
    intermediate_size: int | None = Field(None, gt=0, description="SwiGLU hidden width; none = the preset's")
    tie_embeddings: bool | None = Field(
        None, description="Share input and output embeddings; none = the preset's"
    )
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base (Llama 2: 10,000; Llama 3: 500,000)")
    vocab_size: int | None = Field(
        None,
        gt=0,
        description="Must equal the tokenizer's vocabulary when set (recipes pin it); none = the tokenizer's",
    )
    attention: Literal["auto", "sdpa", "flash_attention_2", "eager"] = runtime_field(
        "auto",
        description="Attention kernel; auto = flash_attention_2 on GPUs with flash-attn installed, else sdpa",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from llmforge.model.llama import PRESETS

        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r} (presets: {', '.join(PRESETS)})")
        return value


class OptimConfig(StageConfig):
    lr: float = Field(3e-4, gt=0, description="Peak learning rate")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW weight decay (not applied to norms, biases, embeddings)"
    )
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = off)")
    schedule: Literal["cosine", "wsd", "constant"] = Field(
        "cosine",
        description="cosine: warmup then cosine decay; wsd: warmup-stable-decay; constant: warmup then flat",
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Warmup steps; none = warmup_fraction of the steps"
    )
    warmup_fraction: float = Field(
        0.01, ge=0, lt=1, description="Warmup share of the steps when warmup_steps is unset"
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak")
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="wsd: share of the steps spent decaying at the end"
    )


class DistributedConfig(StageConfig):
    zero: Literal[0, 1, 2, 3] = runtime_field(
        0, description="DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also weights"
    )
    offload: Literal["none", "cpu"] = runtime_field(
        "none", description="Keep optimizer states (and with ZeRO-3 weights) in CPU memory"
    )
    deepspeed: str | None = runtime_field(
        None, description='A DeepSpeed JSON config to use instead of zero/offload (batch keys may be "auto")'
    )
    nproc: int = runtime_field(
        1, ge=1, description="Training processes per node (GPUs; CPU processes without one)"
    )
    hostfile: str | None = runtime_field(
        None, description="Multi-node: a hostfile ('HOST slots=N' lines) for the deepspeed launcher"
    )


class CheckpointConfig(StageConfig):
    every: int = runtime_field(
        1000, ge=0, description="Save resume state every this many steps (0 = only at a stop)"
    )
    keep: int = runtime_field(2, ge=1, description="Checkpoints kept in OUT/checkpoints")


class EvalConfig(StageConfig):
    every: int = runtime_field(
        250, ge=0, description="Validation loss every this many steps and at the end (0 = never)"
    )
    batches: int = runtime_field(20, ge=1, description="Micro-batches per process in each validation")


class StabilityConfig(StageConfig):
    spike_factor: float = Field(
        2.0,
        ge=0,
        description="A step loss above this x the recent mean is a spike: rewind and skip (0 = NaN only)",
    )
    spike_window: int = Field(
        50, ge=1, description="Steps in the recent mean; spikes are detected once it is full"
    )
    max_rewinds: int = runtime_field(10, ge=0, description="Give up after this many rewinds in one run")


class LoggingConfig(StageConfig):
    every: int = runtime_field(10, ge=1, description="Log a metrics line every this many steps")
    tensorboard: bool = runtime_field(
        True, description="TensorBoard events in OUT/logs when tensorboard is installed"
    )
    wandb_project: str | None = runtime_field(
        None, description="Weights & Biases project (when wandb is installed)"
    )
    csv: bool = runtime_field(False, description="DeepSpeed's CSV monitor in OUT/logs")
    peak_tflops: float | None = runtime_field(
        None, gt=0, description="Peak TFLOP/s per device for MFU; none = from the GPU's name (n/a on CPU)"
    )


class Config(StageConfig):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model")
    # The model's identity is fingerprinted as an input of the artifact, so its path is a runtime setting.
    init_from: str | None = runtime_field(
        None,
        description="Continue pretraining this model (a model artifact or a Hugging Face directory): its "
        "architecture and weights; none = random weights from model.*",
    )
    optim: OptimConfig = Field(
        default_factory=OptimConfig, description="Optimizer and learning-rate schedule"
    )
    seq_len: int = Field(
        2048, gt=0, description="Tokens per training sequence (and the model's context length)"
    )
    batch_tokens: int = Field(
        524_288, gt=0, description="Tokens per optimizer step (reached by gradient accumulation)"
    )
    micro_batch_size: int = runtime_field(
        8, ge=1, description="Sequences per process per forward/backward pass"
    )
    train_tokens: int | None = Field(
        None, gt=0, description="Tokens to train on; none = one pass over the train split"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16: autocast with fp32 master weights; auto = bf16 on GPUs that have it, else fp32",
    )
    document_masking: bool = Field(True, description="Attend only within each document of a packed sequence")
    activation_checkpointing: bool = runtime_field(
        False, description="Recompute activations in backward to save memory"
    )
    compile: bool = runtime_field(False, description="torch.compile the model")
    compile_backend: str = runtime_field(
        "inductor",
        description="torch.compile backend (inductor; aot_eager skips code generation, for debugging)",
    )
    seed: int = Field(0, description="Seed for the initial weights and the data order")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="DeepSpeed and processes"
    )
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Resume state")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Validation loss")
    stability: StabilityConfig = Field(
        default_factory=StabilityConfig, description="Loss spike and NaN handling"
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metrics and display")
    stop_after: int | None = runtime_field(
        None, ge=1, description="Stop this invocation once the run reaches this step (resume state saved)"
    )


class Stats(TrainingSummary):
    """What pretrain writes in its manifest's stats (read by `llmforge card`): the plan's figures, what the loop
    did, and the losses summarised from metrics.jsonl (`train.stats`)."""

    parameters: int
    tokens: int  # trained on: steps x batch_tokens
    tokens_per_parameter: float
    steps: int
    resumed_from_step: int  # the checkpoint the last invocation started from (0: none)
    batch_tokens: int
    training_flops: float
    rewinds: int  # loss spikes rolled back
    skipped_batches: list[int]
    processes: int
    zero: int  # DeepSpeed ZeRO stage


# ---------------------------------------------------------------------------------------------------------------
# Planning: everything checked and computed before any training


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


# Settings that shape the model; an init model brings its own, so they are refused beside --init-from.
ARCHITECTURE_SETTINGS = ("preset", "arch", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                         "intermediate_size", "tie_embeddings", "rope_theta")  # fmt: skip
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def init_model(config: Config, artifact, shards) -> tuple[Any, Any, int]:
    """The model to continue pretraining (`init_from`), its config for this run and the context it had, checked
    against the tokens' tokenizer."""
    from transformers import AutoConfig

    from llmforge.console import warn
    from llmforge.data.tokenizer import tokenizer_fingerprint
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
    return source, hf_config, context


def model_config(config: Config, tokenizer) -> Any:
    from llmforge.model.llama import build_config, special_ids_of

    vocab = len(tokenizer)
    if config.model.vocab_size is not None and config.model.vocab_size != vocab:
        raise InputError(f"model.vocab_size {config.model.vocab_size} does not match the tokenizer's vocabulary "
                         f"of {vocab} tokens; leave it unset to use the tokenizer's")  # fmt: skip
    m = config.model
    hf_config = build_config(m.preset, vocab, special_ids_of(tokenizer), arch=m.arch,
                             max_position_embeddings=config.seq_len, rope_theta=m.rope_theta,
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


def resolve_attention(attention: str) -> str:
    if attention == "auto":
        return "flash_attention_2" if machine.has_flash_attention() else "sdpa"
    return attention


def accumulation_steps(config: Config, world: int) -> int:
    per_pass = config.seq_len * config.micro_batch_size * world
    if config.batch_tokens % per_pass:
        raise InputError(
            f"batch_tokens {config.batch_tokens:,} is not a multiple of seq_len x micro_batch_size x processes = "
            f"{config.seq_len} x {config.micro_batch_size} x {world} = {per_pass:,}; choose a batch_tokens that is"
        )
    return config.batch_tokens // per_pass


def deepspeed_settings(config: Config, accumulation: int, precision: str) -> dict[str, Any]:
    from llmforge.train.deepspeed import deepspeed_config, fill_auto, load_deepspeed_json

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
        settings = fill_auto(user, computed, source=dist.deepspeed)
    else:
        settings = deepspeed_config(dist.zero, dist.offload, micro_batch_size=config.micro_batch_size,
                                    gradient_accumulation_steps=accumulation, gradient_clipping=config.optim.grad_clip,
                                    precision="bf16-autocast" if precision == "bf16" else "fp32")  # fmt: skip
    return settings


def plan_run(tokens: str | Path, config: Config) -> dict[str, Any]:
    """Check every input and setting, and work out the run (no training, nothing written)."""
    from llmforge.model.estimate import ModelShape, device_peak_flops, estimate
    from llmforge.train import launch
    from llmforge.train.data import PackedWindows

    artifact, shards, tokenizer = _tokens_input(tokens)
    source, context = None, None
    if config.init_from:
        source, hf_config, context = init_model(config, artifact, shards)
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
    return {"artifact": artifact, "shards": shards, "tokenizer": tokenizer, "hf_config": hf_config,
            "init": source, "init_context": context, "world": world, "accumulation": accumulation,
            "precision": precision, "deepspeed": ds_config,
            "steps": steps, "available_tokens": available, "estimate": numbers, "peak_flops": peak,
            "warmup": min(warmup, steps), "attention": resolve_attention(config.model.attention)}  # fmt: skip


def print_plan(plan: dict[str, Any], config: Config) -> None:
    from rich.table import Table

    from llmforge.console import console, warn
    from llmforge.model.estimate import human_bytes, human_count

    numbers = plan["estimate"]
    hf = plan["hf_config"]
    passes = numbers.tokens / plan["available_tokens"]
    table = Table(title="pretraining plan", show_header=False, title_justify="left")
    table.add_column(style="cyan")
    table.add_column()
    init = plan["init"]
    if init is not None:
        context = plan["init_context"]
        extended = hf.max_position_embeddings != context
        longer = f"; context {context} -> {hf.max_position_embeddings}" if extended else ""
        table.add_row("init from", f"{init.path} ({init.kind}, {init.fingerprint[:12]}): its weights{longer}")
    name = hf.model_type if init is not None else f"{config.model.arch} {config.model.preset}"
    theta = getattr(hf, "rope_theta", None) or (getattr(hf, "rope_parameters", None) or {}).get("rope_theta")
    table.add_row("model", f"{name}: {hf.num_hidden_layers} layers, "
                  f"hidden {hf.hidden_size}, {hf.num_attention_heads} heads / "
                  f"{getattr(hf, 'num_key_value_heads', None) or hf.num_attention_heads} kv, "
                  f"ffn {hf.intermediate_size}, vocab {hf.vocab_size}"
                  f"{f', rope theta {theta:g}' if theta else ''}"
                  f"{', tied embeddings' if hf.tie_word_embeddings else ''}")  # fmt: skip
    table.add_row("parameters", human_count(numbers.parameters))
    table.add_row(
        "tokens",
        f"{human_count(numbers.tokens)} ({passes:.2f} passes over {human_count(plan['available_tokens'])})",
    )
    table.add_row("tokens per parameter", f"{numbers.tokens_per_parameter:.3g} (Chinchilla-optimal ~20: "
                  f"{human_count(numbers.chinchilla_tokens)} tokens)")  # fmt: skip
    table.add_row("training FLOPs (6ND)", f"{numbers.training_flops:.3g}")
    table.add_row("batch", f"{config.batch_tokens:,} tokens = seq {config.seq_len} x micro-batch "
                  f"{config.micro_batch_size} x accumulation {plan['accumulation']} x {plan['world']} processes")  # fmt: skip
    table.add_row("steps", f"{plan['steps']:,} ({config.optim.schedule}, peak lr {config.optim.lr:g}, "
                  f"warmup {plan['warmup']})")  # fmt: skip
    zero = numbers.zero
    memory = numbers.memory_per_device[zero]
    offload = f", offload {numbers.offload}" if numbers.offload else ""
    table.add_row(
        "precision / ZeRO", f"{plan['precision']}, ZeRO-{zero}{offload}, attention {plan['attention']}"
    )
    table.add_row("memory per device", f"{human_bytes(memory['total'])} for weights, gradients and Adam states "
                  f"+ ~{human_bytes(numbers.activation_bytes)} activations per micro-batch")  # fmt: skip
    if plan["peak_flops"]:
        hours = numbers.training_flops / (plan["peak_flops"] * plan["world"] * 0.4) / 3600
        table.add_row(
            "time at 40% MFU", f"{hours:.3g} h on {plan['world']} devices (measured after the first steps)"
        )
    else:
        table.add_row("time", "measured after the first steps")
    console.print(table)
    if passes > USEFUL_PASSES:
        warn(f"{passes:.1f} passes over the same tokens; beyond ~{USEFUL_PASSES}, repeated data adds little")


# ---------------------------------------------------------------------------------------------------------------
# The stage


def run(tokens: str | Path, out: str | Path, config: Config | None = None, force: bool = False,
        dry_run: bool = False) -> Path | None:  # fmt: skip
    """Pretrain on a tokens artifact; returns the model artifact's path (None for a dry run)."""
    from llmforge.artifacts import run_stage

    config = config or Config()
    plan = plan_run(tokens, config)
    if dry_run:
        print_plan(plan, config)
        return None
    # The plan is printed once the output is known to be usable (inside the stage body): a refused output is
    # one line, and an up-to-date one prints nothing but its path.
    inputs = [plan["artifact"].ref()] + ([plan["init"].ref()] if plan["init"] is not None else [])
    return run_stage(STAGE, "model", config, inputs, out,
                     lambda ctx: _train(ctx, config, plan), force=force)  # fmt: skip


def _init_location(source) -> str | None:
    """Where the training processes load the init model from: an absolute directory, or a hub id."""
    if source is None:
        return None
    return source.path if source.kind == "hub" else str(Path(source.path).resolve())


def _train(ctx, config: Config, plan: dict[str, Any]) -> None:
    import json

    from llmforge.data.tokenizer import tokenizer_fingerprint
    from llmforge.files import read_jsonl
    from llmforge.train import checkpoint as ckpt
    from llmforge.train.launch import launch
    from llmforge.train.loop import RunSpec, train
    from llmforge.train.metrics import monitor_config, summarize

    checkpoints = ctx.work / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    zero = plan["deepspeed"].get("zero_optimization", {}).get("stage", 0)
    found = ckpt.latest(checkpoints)
    if found and (found[1]["world_size"], found[1]["zero"]) != (plan["world"], zero):
        raise InputError(
            f"{found[0]}: written by {found[1]['world_size']} processes with ZeRO-{found[1]['zero']}, this run has "
            f"{plan['world']} with ZeRO-{zero}; resume with the same --nproc/--hostfile and --zero, or --force"
        )
    print_plan(plan, config)
    logs = ctx.work / "logs"
    monitors = monitor_config(
        logs, config.logging.tensorboard, config.logging.wandb_project, config.logging.csv
    )
    o = config.optim
    spec = RunSpec(
        tokens_dir=str(Path(plan["artifact"].path).resolve()),
        work_dir=str(ctx.work.resolve()),
        model_config=plan["hf_config"].to_dict(),
        init_from=_init_location(plan["init"]),
        seq_len=config.seq_len,
        micro_batch_size=config.micro_batch_size,
        gradient_accumulation=plan["accumulation"],
        world_size=plan["world"],
        steps=plan["steps"],
        seed=config.seed,
        lr=o.lr,
        betas=o.betas,
        eps=o.eps,
        weight_decay=o.weight_decay,
        schedule={
            "kind": o.schedule,
            "total_steps": plan["steps"],
            "warmup_steps": plan["warmup"],
            "min_ratio": o.min_lr_ratio,
            "decay_fraction": o.decay_fraction,
        },  # fmt: skip
        deepspeed={**plan["deepspeed"], **monitors},
        attention=plan["attention"],
        document_masking=config.document_masking,
        activation_checkpointing=config.activation_checkpointing,
        compile=config.compile,
        compile_backend=config.compile_backend,
        flops_per_token=plan["estimate"].flops_per_token,
        checkpoint_every=config.checkpoint.every,
        keep_checkpoints=config.checkpoint.keep,
        val_every=config.eval.every,
        val_batches=config.eval.batches,
        log_every=config.logging.every,
        spike_factor=config.stability.spike_factor,
        spike_window=config.stability.spike_window,
        max_rewinds=config.stability.max_rewinds,
        stop_after=config.stop_after,
        peak_flops=plan["peak_flops"],
    )
    plan_file = checkpoints / "plan.json"
    spec.save(plan_file)
    (checkpoints / "result.json").unlink(missing_ok=True)
    if plan["world"] == 1 and config.distributed.hostfile is None:
        train(spec)  # one process: no launcher, the same loop
    else:
        launch(plan_file, config.distributed.nproc, config.distributed.hostfile)
    result = json.loads((checkpoints / "result.json").read_text())
    if result["status"] == "stopped":
        from llmforge.train.loop import StoppedEarly

        raise StoppedEarly(f"stopped at step {config.stop_after} of {plan['steps']} as asked (stop_after); "
                           "re-run the same command without it to resume")  # fmt: skip

    numbers = plan["estimate"]
    records = read_jsonl(ctx.work / "metrics.jsonl")
    resumes = [r["step"] for r in records if r.get("event") == "resume"]
    ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)
    if plan["init"] is not None:
        init = plan["init"]
        ctx.extra["init_from"] = {"path": spec.init_from, "kind": init.kind, "fingerprint": init.fingerprint}
    ctx.stats.update({
        "parameters": int(numbers.parameters),
        "tokens": spec.steps * spec.batch_tokens,
        "tokens_per_parameter": round(numbers.tokens_per_parameter, 3),
        "steps": spec.steps,
        "resumed_from_step": resumes[-1] if resumes else 0,  # the checkpoint the last invocation started from
        "batch_tokens": spec.batch_tokens,
        "training_flops": numbers.training_flops,
        **summarize(records),
        "rewinds": result["rewinds"],
        "skipped_batches": result["skipped_batches"],
        "processes": plan["world"],
        "zero": zero,
    })  # fmt: skip


FLAGS = (
    Flag("model.preset"),
    Flag("model.arch"),
    Flag("init_from", "--init-from"),
    Flag("seq_len"),
    Flag("batch_tokens"),
    Flag("micro_batch_size"),
    Flag("train_tokens"),
    Flag("optim.lr"),
    Flag("optim.schedule"),
    Flag("precision"),
    Flag("distributed.zero"),
    Flag("distributed.offload"),
    Flag("distributed.deepspeed"),
    Flag("distributed.nproc"),
    Flag("distributed.hostfile"),
    Flag("checkpoint.every", "--checkpoint-every"),
    Flag("activation_checkpointing"),
    Flag("compile", "--compile/--no-compile"),
)


@stage_command(FLAGS)
def command(
    tokens: Annotated[Path, typer.Argument(help="A tokens artifact (from `llmforge tokenize encode`).")],
    output: Path,
    config: Config,
    force: bool = False,
    dry_run: bool = False,
) -> None:
    run(tokens, output, config, force=force, dry_run=dry_run)
