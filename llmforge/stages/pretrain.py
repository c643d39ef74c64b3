"""Pretrain a Llama-style model on token shards; writes a model artifact (a Hugging Face directory).

The model comes from a size preset (`tiny` for CPU tests up to `1b` and `7b` shapes) or explicit dimensions, with
the tokenizer's vocabulary, or with `--init-from MODEL` (continued pretraining) from an existing model's config and
weights, on tokens encoded with its own tokenizer. AdamW with warmup + cosine or WSD, a batch set in tokens and reached by gradient
accumulation, DeepSpeed ZeRO 0-3 (`--zero 2 --offload cpu` or `--deepspeed ds.json`), one process by default or
`--nproc N` / `--hostfile FILE` under torchrun / the deepspeed launcher. Checkpoints in OUT/checkpoints resume an
interrupted run automatically; loss spikes and NaNs rewind to the last checkpoint and skip the batch.

Below: the settings (Config), then `run`. What is checked and computed before training (and printed by `--dry-run`)
is llmforge.train.pretrain_plan; the training loop every process runs is llmforge.train.loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, NotRequired

import typer
from pydantic import Field, field_validator, model_validator

from llmforge.config import StageConfig, runtime_field
from llmforge.errors import InputError
from llmforge.options import Flag, stage_command
from llmforge.train.stats import TrainingSummary

STAGE = "pretrain"


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
    num_experts: int = Field(
        0,
        ge=0,
        description="Mixture of experts: this many SwiGLU experts (each intermediate_size wide) replace every "
        "layer's MLP, and a router picks experts_per_token of them per token (llama becomes Mixtral, qwen3 "
        "Qwen3-MoE); 0 = dense",
    )
    experts_per_token: int = Field(2, ge=1, description="MoE: experts each token is routed to (top-k)")
    router_aux_loss: float | None = Field(
        None,
        ge=0,
        description="MoE: weight of the router's load-balancing loss (Switch Transformers), which keeps tokens "
        "spread over the experts; none = 0.01 for a new model, the init model's own when continuing one",
    )
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base (Llama 2: 10,000; Llama 3: 500,000)")
    vocab_size: int | None = Field(
        None,
        gt=0,
        description="Must equal the tokenizer's vocabulary when set (recipes pin it); none = the tokenizer's",
    )
    attention: Literal["auto", "sdpa", "flex_attention", "flash_attention_2", "eager"] = runtime_field(
        "auto",
        description="Attention kernel; auto = flash_attention_2 on GPUs with flash-attn installed, else "
        "flex_attention on GPUs when document masking is on (block masks, no dense mask), else sdpa",
    )

    @model_validator(mode="after")
    def _experts_fit(self) -> ModelConfig:
        if self.num_experts == 1:
            raise ValueError("num_experts 1 is a dense MLP with a router; use 0 (dense) or 2 or more")
        if self.num_experts and self.experts_per_token > self.num_experts:
            raise ValueError(
                f"experts_per_token {self.experts_per_token} is more than num_experts {self.num_experts}"
            )
        return self

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
    z_loss: float = Field(
        0.0,
        ge=0,
        description="PaLM's z-loss: add z_loss x log(Z)^2 per token (Z: the softmax normaliser of the output "
        "logits), which keeps the logits from drifting large; 1e-4 in PaLM and OLMo 2; 0 = off. The logged loss "
        "stays the cross-entropy; the mean log(Z)^2 is logged as z_squared",
    )


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
    compile: bool | None = runtime_field(
        None,
        description="torch.compile the model and the loss; none = on GPUs (ZeRO 0-2, not with Liger's fused loss), "
        "off on CPU",
    )
    compile_backend: str = runtime_field(
        "inductor",
        description="torch.compile backend (inductor; aot_eager skips code generation, for debugging)",
    )
    kernels: str = runtime_field(
        "auto",
        description="Fused Triton kernels from Liger Kernel: liger = all three, or a comma-separated list of "
        "rms_norm, swiglu, fused_linear_cross_entropy (each measured on its own in bench/RESULTS.md); auto = liger "
        "for uncompiled GPU runs where liger-kernel is installed (not with ZeRO-3; the fused loss fails under "
        "torch.compile), none = PyTorch's",
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

    @field_validator("kernels")
    @classmethod
    def _known_kernels(cls, value: str) -> str:
        from llmforge.model.kernels import canonical_kernels

        return canonical_kernels(value)


class Stats(TrainingSummary):
    """What pretrain writes in its manifest's stats (read by `llmforge card`): the plan's figures, what the loop
    did, and the losses summarised from metrics.jsonl (`train.stats`)."""

    parameters: int
    active_parameters: NotRequired[int]  # a mixture of experts: those one token uses
    experts: NotRequired[int]  # a mixture of experts: per layer
    experts_per_token: NotRequired[int]
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
    attention: str  # the attention implementation the run used
    compiled: bool  # torch.compile on
    kernels: str  # none, liger (all three) or the Liger kernels used, comma-separated
    first_step_extra_seconds: NotRequired[float]  # step 1 beyond a steady step: torch.compile, allocations


# ---------------------------------------------------------------------------------------------------------------
# The stage


def run(tokens: str | Path, out: str | Path, config: Config | None = None, force: bool = False,
        dry_run: bool = False) -> Path | None:  # fmt: skip
    """Pretrain on a tokens artifact; returns the model artifact's path (None for a dry run)."""
    from llmforge.artifacts import run_stage
    from llmforge.train.pretrain_plan import make_plan, print_plan

    config = config or Config()
    plan = make_plan(tokens, config)  # every input and setting checked before anything is written
    if dry_run:
        print_plan(plan, config)
        return None
    # The plan is printed once the output is known to be usable (inside the stage body): a refused output is
    # one line, and an up-to-date one prints nothing but its path.
    inputs = [plan.tokens.ref()] + ([plan.init.ref()] if plan.init is not None else [])
    return run_stage(STAGE, "model", config, inputs, out, lambda ctx: _train(ctx, config, plan), force=force)


def _train(ctx, config: Config, plan) -> None:
    """Train in this process (one process) or in workers under the launcher, then record what the run did."""
    import json

    from llmforge.data.tokenizer import tokenizer_fingerprint
    from llmforge.files import read_jsonl
    from llmforge.model.llama import experts_of
    from llmforge.train import checkpoint as ckpt
    from llmforge.train.launch import launch
    from llmforge.train.loop import StoppedEarly, first_step_extra, train
    from llmforge.train.metrics import monitor_config, summarize
    from llmforge.train.pretrain_plan import print_plan

    checkpoints = ctx.work / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    ckpt.discard_unfinished(checkpoints)
    found = ckpt.verified_latest(
        checkpoints
    )  # its files are loaded with pickle: checked against their hashes
    if found and (found[1]["world_size"], found[1]["zero"]) != (plan.world_size, plan.zero):
        raise InputError(
            f"{found[0]}: written by {found[1]['world_size']} processes with ZeRO-{found[1]['zero']}, this run has "
            f"{plan.world_size} with ZeRO-{plan.zero}; resume with the same --nproc/--hostfile and --zero, or --force"
        )
    print_plan(plan, config)
    logging = config.logging
    monitors = monitor_config(ctx.work / "logs", logging.tensorboard, logging.wandb_project, logging.csv)
    spec = plan.run_spec(config, ctx.work, monitors)
    job = checkpoints / "plan.json"
    spec.save(job)
    (checkpoints / "result.json").unlink(missing_ok=True)
    if plan.world_size == 1 and config.distributed.hostfile is None:
        train(spec)  # one process: no launcher, the same loop
    else:
        launch(job, config.distributed.nproc, config.distributed.hostfile)
    result = json.loads((checkpoints / "result.json").read_text())
    if result["status"] == "stopped":
        raise StoppedEarly(f"stopped at step {config.stop_after} of {plan.steps} as asked (stop_after); "
                           "re-run the same command without it to resume")  # fmt: skip

    numbers = plan.estimate
    records = read_jsonl(ctx.work / "metrics.jsonl")
    resumes = [r["step"] for r in records if r.get("event") == "resume"]
    ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)
    if plan.init is not None:
        init = plan.init
        ctx.extra["init_from"] = {"path": spec.init_from, "kind": init.kind, "fingerprint": init.fingerprint}
    experts, per_token = experts_of(plan.model_config.to_dict())
    if experts:
        ctx.stats.update({"active_parameters": int(numbers.active_parameters), "experts": experts,
                          "experts_per_token": per_token})  # fmt: skip
    ctx.stats.update({
        "parameters": int(numbers.parameters),
        "tokens": plan.steps * config.batch_tokens,
        "tokens_per_parameter": round(numbers.tokens_per_parameter, 3),
        "steps": plan.steps,
        "resumed_from_step": resumes[-1] if resumes else 0,  # the checkpoint the last invocation started from
        "batch_tokens": config.batch_tokens,
        "training_flops": numbers.training_flops,
        **summarize(records),
        "rewinds": result["rewinds"],
        "skipped_batches": result["skipped_batches"],
        "processes": plan.world_size,
        "zero": plan.zero,
        "attention": plan.attention,
        "compiled": plan.compile,
        "kernels": plan.kernels,
        **first_step_extra(records),
    })  # fmt: skip


FLAGS = (
    Flag("model.preset"),
    Flag("model.arch"),
    Flag("model.num_experts"),
    Flag("model.experts_per_token"),
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
    Flag("model.attention"),
    Flag("kernels"),
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
