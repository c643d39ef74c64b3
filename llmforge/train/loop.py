"""The pretraining loop: one DeepSpeed engine per process, the same code on one CPU process or many GPUs.

`llmforge pretrain` writes a RunSpec to OUT.partial/checkpoints/plan.json and calls `train()` in its own process
(one process) or starts `python -m llmforge.train.worker plan.json` under torchrun / the deepspeed launcher
(several). Every process builds the model, joins the process group (NCCL on GPUs, gloo on CPU) and trains its share
of each batch; ZeRO shards optimizer states, gradients and weights between them as configured.

Stability: a non-finite loss or gradient norm, or a loss above `spike_factor` x the mean of the last
`spike_window` steps, rewinds the run to the last complete checkpoint (or to the initial weights when there is none
yet: random, or the init model's when continuing one), marks the offending batch as skipped and trains on. Every
process reaches the same decision because the loss is all-reduced first.

Fault injection for tests (read here and nowhere else): LLMFORGE_INJECT_LOSS="5:nan,9:100" multiplies the loss of
global batch 5 by NaN and of batch 9 by 100, as a corrupted batch would.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmforge import machine
from llmforge.errors import LLMForgeError
from llmforge.files import write_json
from llmforge.model.kernels import FUSED_LOSS, liger_kernels
from llmforge.model.llama import router_aux_coefficient
from llmforge.train import checkpoint as ckpt
from llmforge.train.data import PackedWindows
from llmforge.train.schedule import Schedule

if TYPE_CHECKING:
    from llmforge.stages.pretrain import Config

INJECT_ENV = "LLMFORGE_INJECT_LOSS"
JOB_KIND = "pretrain"  # the worker's name for a RunSpec file


@dataclass
class RunSpec:
    """What every training process reads: the resolved settings plus what the plan computed from them and the
    inputs. Saved as OUT.partial/checkpoints/plan.json (the settings as their JSON; workers rebuild the Config)."""

    config: Config  # the stage's settings, as resolved by `llmforge pretrain`
    tokens_dir: str  # the tokens artifact (absolute)
    work_dir: str  # OUT.partial (absolute)
    model_config: dict[str, Any]  # transformers config.to_dict() of the model to train
    init_from: str | None  # continued pretraining: the init model's directory (or hub id)
    world_size: int  # training processes in all
    accumulation: int  # micro-batches per process per optimizer step
    steps: int  # optimizer steps
    warmup: int  # warmup steps
    precision: str  # fp32 | bf16 (applied through the DeepSpeed config)
    attention: str  # sdpa | flex_attention | flash_attention_2 | eager
    compile: bool  # torch.compile the model and the loss
    kernels: str  # none, liger (all three) or the Liger kernels, comma-separated (llmforge.model.kernels)
    deepspeed: dict[str, Any]  # the DeepSpeed config, with llmforge's monitor sections
    flops_per_token: float  # for FLOP/s and MFU
    peak_flops: float | None  # per device; None = not known

    @property
    def checkpoints(self) -> Path:
        return Path(self.work_dir) / "checkpoints"

    def save(self, path: Path) -> None:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        write_json(path, {"kind": JOB_KIND, **fields, "config": self.config.model_dump(mode="json")})

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        from llmforge.stages.pretrain import Config  # the stage owns its settings

        fields = json.loads(Path(path).read_text())
        fields.pop("kind", None)
        return cls(**{**fields, "config": Config.model_validate(fields["config"])})


class StoppedEarly(LLMForgeError):
    """The run stopped where it was asked to (stop_after); its resume state is saved, the artifact unfinished."""


class Rewind(Exception):
    """The current batch must not be trained on: go back to the last good checkpoint and skip it."""

    def __init__(self, batch: int, step: int, reason: str):
        super().__init__(reason)
        self.batch, self.step, self.reason = batch, step, reason


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    next_batch: int = 0  # the data position: the next global batch to train on
    recent_losses: list[float] = field(default_factory=list)


def local_processes() -> int:
    """Training processes on this node: torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)


def injected_losses() -> dict[int, float]:
    text = os.environ.get(INJECT_ENV, "").strip()
    factors = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        batch, _, factor = item.partition(":")
        factors[int(batch)] = float(factor)
    return factors


def loop_clipping(deepspeed: dict[str, Any]) -> float:
    """The norm the loop clips gradients to in DeepSpeed's place, or 0 where DeepSpeed should clip. Under ZeRO-0
    in fp32 or torch autocast, DeepSpeed clips with a norm per parameter and a threshold tensor built on the host
    (`torch.tensor([max_norm], device=...)`: a blocking copy, so a wait for the GPU every step;
    deepspeed/runtime/utils.py clip_grad_norm_). Its ZeRO optimizers and fp16/bf16 optimizers clip inside their own
    step, and an fp16 autocast loss scaler must unscale first: those keep DeepSpeed's clipping."""
    clip = deepspeed.get("gradient_clipping", 0.0)
    stage = deepspeed.get("zero_optimization", {}).get("stage", 0)
    wrapped = any(deepspeed.get(key, {}).get("enabled") in (True, "true", "auto") for key in ("fp16", "bf16"))
    scaled = deepspeed.get("torch_autocast", {}).get("dtype") in ("float16", "torch.float16", "fp16")
    if not isinstance(clip, int | float) or clip <= 0 or stage != 0 or wrapped or scaled:
        return 0.0
    return float(clip)


def train(spec: RunSpec) -> dict[str, Any]:
    """Train (or resume) the run described by `spec`; rank 0 writes the Hugging Face model into the work dir and
    returns the result (also written to checkpoints/result.json)."""
    from llmforge.train.deepspeed import init_distributed

    init_distributed()
    import warnings

    import torch.distributed as dist

    # DeepSpeed calls collectives that torch renamed; the warning would repeat on every step of every process.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )

    if dist.get_world_size() != spec.world_size:
        raise LLMForgeError(
            f"{dist.get_world_size()} processes joined, the plan was made for {spec.world_size}; "
            "start the run through `llmforge pretrain` with the same --nproc / --hostfile"
        )
    return Trainer(spec, dist.get_rank()).run()


class Trainer:
    def __init__(self, spec: RunSpec, rank: int):
        import torch

        from llmforge.train.metrics import Reporter, split_monitors

        self.spec, self.config, self.rank, self.world = spec, spec.config, rank, spec.world_size
        config = spec.config
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if machine.has_cuda()
                                   else "cpu")  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.train_data = PackedWindows(
            spec.tokens_dir, "train", config.seq_len, config.seed, config.document_masking
        )
        self.val_data = self._validation_windows()
        self.schedule = Schedule(config.optim.schedule, spec.steps, spec.warmup, config.optim.min_lr_ratio,
                                 config.optim.decay_fraction)  # fmt: skip
        self.skipped = ckpt.load_skipped(spec.checkpoints)
        self.injected = injected_losses()
        # the engine's DeepSpeed config leaves out the monitors: rank 0's Reporter writes them, on the step axis
        self.deepspeed, monitors = split_monitors(spec.deepspeed)
        self.clip_norm = loop_clipping(self.deepspeed)
        if self.clip_norm:  # the loop clips in DeepSpeed's place
            self.deepspeed = {**self.deepspeed, "gradient_clipping": 0.0}
        self.reporter = Reporter(Path(spec.work_dir) / "metrics.jsonl", rank == 0, spec.steps, config.batch_tokens,
                                 spec.flops_per_token, spec.peak_flops, self.world, monitors)  # fmt: skip
        self.vocab_size = spec.model_config["vocab_size"]
        self.flatten = config.document_masking and spec.attention == "flash_attention_2"
        self.fused_loss = FUSED_LOSS in liger_kernels(spec.kernels)  # the model's forward returns the loss
        self.cross_entropy, self.with_z = token_cross_entropy, cross_entropy_and_z
        if spec.compile:  # fused by inductor: no float32 copy of the logits
            self.cross_entropy = torch.compile(token_cross_entropy, backend=config.compile_backend)
            self.with_z = torch.compile(cross_entropy_and_z, backend=config.compile_backend)
        self.z_loss = config.stability.z_loss
        self.router_aux = router_aux_coefficient(spec.model_config)  # > 0: a mixture of experts
        # the last step's mean of each extra objective term: log(Z)^2 with z_loss, the router's balance with MoE
        self.last_terms: dict[str, float] = {}
        self.started = time.perf_counter()

    def _validation_windows(self) -> PackedWindows | None:
        from llmforge.data.shards import TokenShards

        if self.config.eval.every <= 0 or TokenShards(self.spec.tokens_dir).num_tokens("val") == 0:
            return None
        windows = PackedWindows(self.spec.tokens_dir, "val", self.config.seq_len, self.config.seed,
                                self.config.document_masking)  # fmt: skip
        return windows if len(windows) >= self.world else None

    # -- the engine -------------------------------------------------------------------------------------------

    def build_engine(self):
        import deepspeed
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        spec, settings = self.spec, self.config
        config = AutoConfig.for_model(**spec.model_config)
        config._attn_implementation = spec.attention
        torch.manual_seed(settings.seed)
        if self.build_sharded():
            # transformers builds the model directly into ZeRO-3 shards (never whole in one process) while this
            # object is alive; its initial weights then differ from an unsharded build with the same seed.
            from transformers.integrations import HfDeepSpeedConfig

            self._zero3_config = HfDeepSpeedConfig(self.deepspeed)
        if spec.init_from:
            # continued pretraining: the init model's weights (whole, or straight into ZeRO-3 shards as above)
            from transformers.utils.logging import disable_progress_bar

            disable_progress_bar()
            model = AutoModelForCausalLM.from_pretrained(spec.init_from, config=config, dtype=torch.float32,
                                                         attn_implementation=spec.attention)  # fmt: skip
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if settings.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if spec.kernels != "none":
            from llmforge.model.kernels import apply_liger

            apply_liger(model, spec.kernels)
        optimizer = self._optimizer(model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=self.deepspeed)  # fmt: skip
        if spec.compile:
            engine.compile(backend=settings.compile_backend)
        engine.train()
        return engine

    def build_sharded(self) -> bool:
        """ZeRO-3 shards a whole model at initialisation, so every stage starts from the same weights; only a
        model too big for every process of a node to hold in CPU memory is built directly into shards."""
        import psutil

        from llmforge.model.estimate import ModelShape

        if self.spec.deepspeed.get("zero_optimization", {}).get("stage", 0) != 3:
            return False
        per_node = local_processes() * ModelShape.from_hf_config(self.spec.model_config).parameters() * 4
        return per_node > 0.5 * psutil.virtual_memory().available

    def _optimizer(self, model):
        """AdamW; no weight decay on norms, biases and embeddings (1-D tensors and lookup tables), as in
        Megatron-LM and OLMo: decaying them only shrinks scales the model needs."""
        import torch

        decay, no_decay = [], []
        for name, param in model.named_parameters():
            shape = getattr(
                param, "ds_shape", param.shape
            )  # ZeRO-3 shards are flat; ds_shape is the real one
            (no_decay if len(shape) < 2 or "embed" in name else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.config.optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
        optim = self.config.optim
        kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
        offload = self.spec.deepspeed.get("zero_optimization", {}).get("offload_optimizer", {}).get("device")
        if self.device.type == "cuda" and offload == "cpu":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
        return torch.optim.AdamW(groups, fused=self.device.type == "cuda" and offload is None, **kwargs)

    def destroy(self, engine) -> None:
        engine.destroy()
        self._zero3_config = None
        gc.collect()
        machine.empty_cache()

    # -- checkpoints ------------------------------------------------------------------------------------------

    def restore(self, engine) -> Position:
        import torch

        found = ckpt.latest(self.spec.checkpoints)
        if found is None:
            return Position()
        path, info = found
        engine.load_checkpoint(str(self.spec.checkpoints), tag=path.name, load_optimizer_states=True,
                               load_lr_scheduler_states=True)  # fmt: skip
        rng = path / f"rng-rank{self.rank}.pt"
        if rng.is_file():
            ckpt.set_rng_state(torch.load(rng, weights_only=False))
        return Position(step=info["step"], next_batch=info["next_batch"], recent_losses=info["recent_losses"])

    def save(self, engine, position: Position) -> None:
        import torch
        import torch.distributed as dist

        name = ckpt.tag(position.step)
        engine.save_checkpoint(str(self.spec.checkpoints), tag=name, save_latest=False)
        torch.save(ckpt.rng_state(), self.spec.checkpoints / name / f"rng-rank{self.rank}.pt")
        dist.barrier()
        if self.rank == 0:
            info = {**asdict(position), "world_size": self.world,
                    "zero": self.spec.deepspeed.get("zero_optimization", {}).get("stage", 0)}  # fmt: skip
            ckpt.mark_complete(self.spec.checkpoints / name, info)
            ckpt.prune(self.spec.checkpoints, self.config.checkpoint.keep)
        dist.barrier()

    # -- the run ----------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import torch

        linear = torch.nn.functional.linear
        try:
            return self._run()
        finally:
            # ZeRO-3 swaps in DeepSpeed's F.linear for the whole process ("this will persist unless manually
            # reset"); whatever runs next in this process (eval, quantize, tests) gets torch's back
            torch.nn.functional.linear = linear

    def _run(self) -> dict[str, Any]:
        rewinds = 0
        status = "finished"
        with self.reporter:
            while True:
                engine = self.build_engine()
                position = self.restore(engine)
                if position.step:
                    self.reporter.resume_at(position.step)
                    self.reporter.event(f"resumed from the checkpoint at step {position.step}", event="resume",
                                        step=position.step, batch=position.next_batch)  # fmt: skip
                try:
                    status = self.loop(engine, position)
                    break
                except Rewind as rewind:
                    rewinds += 1
                    self.skipped.add(rewind.batch)
                    if self.rank == 0:
                        ckpt.save_skipped(self.spec.checkpoints, self.skipped)
                    last = ckpt.latest(self.spec.checkpoints)
                    target = f"the checkpoint at step {last[1]['step']}" if last else "the initial weights"
                    self.reporter.event(
                        f"step {rewind.step}: {rewind.reason}; rewinding to {target} and skipping batch {rewind.batch}",
                        event="rewind", step=rewind.step, batch=rewind.batch, reason=rewind.reason,
                    )  # fmt: skip
                    self.destroy(engine)
                    if rewinds > self.config.stability.max_rewinds:
                        raise LLMForgeError(
                            f"training diverged: {rewinds} rewinds (stability.max_rewinds = {self.config.stability.max_rewinds}); "
                            "lower the learning rate or inspect the skipped batches in checkpoints/skipped.json"
                        ) from None
            if status == "finished":
                self.save_model(engine)
            self.destroy(engine)
        result = {"status": status, "rewinds": rewinds, "skipped_batches": sorted(self.skipped),
                  "seconds": round(time.perf_counter() - self.started, 3)}  # fmt: skip
        if self.rank == 0:
            write_json(self.spec.checkpoints / "result.json", result)
        return result

    def loop(self, engine, position: Position) -> str:
        import torch

        spec, config = self.spec, self.config
        recent = deque(position.recent_losses, maxlen=config.stability.spike_window)
        steps_this_run = 0
        first_seconds = 0.0
        measured: list[float] = []
        while position.step < spec.steps:
            if config.stop_after is not None and position.step >= config.stop_after:
                if (
                    not ckpt.latest(spec.checkpoints)
                    or ckpt.latest(spec.checkpoints)[1]["step"] != position.step
                ):
                    self.save(engine, position)
                self.reporter.event(f"stopped after step {position.step} as asked (stop_after); re-run to resume",
                                    event="stop", step=position.step)  # fmt: skip
                return "stopped"
            batch = position.next_batch
            while batch in self.skipped:
                batch += 1
            lr = engine.get_lr()[0]  # the rate this step's update uses
            started = time.perf_counter()
            loss, grad_norm = self.train_step(engine, batch, position.step, recent)
            seconds = time.perf_counter() - started
            position.step += 1
            position.next_batch = batch + 1
            recent.append(loss)
            position.recent_losses = list(recent)
            steps_this_run += 1
            last = position.step == spec.steps
            self.reporter.step(position.step, batch, loss, lr, grad_norm, seconds,
                               log_now=position.step % config.logging.every == 0 or last or position.step == 1,
                               terms=self.last_terms)  # fmt: skip
            if steps_this_run == 1:
                first_seconds = seconds
            if 2 <= steps_this_run <= 4:  # the first step pays for warm-up (allocations, compilation)
                measured.append(seconds)
                if steps_this_run == 4:
                    steady = sum(measured) / len(measured)
                    self._report_first_step(position.step - 3, first_seconds, steady)
                    self._report_estimate(steady, position.step)
            if self.val_data is not None and (position.step % config.eval.every == 0 or last):
                self.reporter.validation(position.step, self.validate(engine))
            if config.checkpoint.every > 0 and position.step % config.checkpoint.every == 0 and not last:
                self.save(engine, position)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return "finished"

    def train_step(self, engine, batch: int, step: int, recent: deque) -> tuple[float, float | None]:
        """Forward and backward over this process's micro-batches of global batch `batch`, then one update.

        The GPU is waited for once, after the update is queued: the losses and the gradient norm stay on the device
        until then (a wait per micro-batch left the GPU idle while the next kernels were launched). A NaN or a
        spike found then rewinds, which rebuilds the engine from the last checkpoint, so an update made from that
        batch is thrown away with it."""
        import torch
        import torch.distributed as dist

        spec, config = self.spec, self.config
        losses, terms, grad_norm = [], {}, None
        for micro_step in range(spec.accumulation):
            tensors = self._tensors(self.train_data.micro_batch(
                batch, micro_step, self.rank, config.micro_batch_size, spec.accumulation, self.world))  # fmt: skip
            loss, objective, extra = self.objective(engine, tensors)
            for name, value in extra.items():
                terms.setdefault(name, []).append(value.detach().float())
            if batch in self.injected:
                loss, objective = loss * self.injected[batch], objective * self.injected[batch]
            losses.append(loss.detach().float())
            engine.backward(objective)
            if micro_step == spec.accumulation - 1 and not engine.zero_optimization():
                grad_norm = self._clip(engine)  # ZeRO-0 does not keep the norm it clips with
            engine.step()
        shared = torch.stack(losses + [value for values in terms.values() for value in values])
        dist.all_reduce(shared)
        shared = (shared / self.world).tolist()  # the step's one wait for the GPU
        losses, n = shared[: len(losses)], len(losses)
        self.last_terms = {name: sum(shared[n * i + n : n * i + 2 * n]) / n for i, name in enumerate(terms)}
        if engine.zero_optimization():
            grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        step_loss = sum(losses) / len(losses)
        if not all(math.isfinite(value) for value in losses):
            raise Rewind(batch, step + 1, f"loss is {next(v for v in losses if not math.isfinite(v))}")
        spike = config.stability.spike_factor
        if spike > 0 and len(recent) == recent.maxlen and step_loss > spike * (sum(recent) / len(recent)):
            raise Rewind(batch, step + 1, f"loss spike: {step_loss:.4f} > {spike:g} x the mean "
                                          f"{sum(recent) / len(recent):.4f} of the last {len(recent)} steps")  # fmt: skip
        if grad_norm is not None and not math.isfinite(grad_norm):
            raise Rewind(batch, step + 1, f"gradient norm is {grad_norm}")
        return step_loss, grad_norm

    def _clip(self, engine):
        """The global gradient norm as a device tensor (read after the update is queued), the gradients clipped to
        `clip_norm` when the loop clips: fused kernels (torch's clip_grad_norm_), no wait for the GPU."""
        import torch

        parameters = [p for p in engine.module.parameters() if p.grad is not None]
        if not parameters:
            return 0.0
        if self.clip_norm:
            return torch.nn.utils.clip_grad_norm_(parameters, self.clip_norm)
        return torch.nn.utils.get_total_norm([p.grad for p in parameters])

    def _tensors(self, batch):
        import torch

        if self.flatten:
            batch = batch.flattened()
        arrays = (batch.input_ids, batch.targets, batch.position_ids)
        if self.device.type == "cuda":  # from pinned memory the copy is queued, not waited for
            return tuple(torch.from_numpy(a).pin_memory().to(self.device, non_blocking=True) for a in arrays)
        return tuple(torch.from_numpy(a) for a in arrays)

    def objective(self, engine, tensors):
        """(the cross-entropy, logged and watched for spikes; the objective trained on; its extra terms, logged by
        name). The extra terms only train: PaLM's z-loss, and a mixture of experts' load-balancing loss, which
        transformers computes from every layer's router logits (Switch Transformers' fraction-of-tokens x
        mean-probability sum, `experts_per_token` when perfectly balanced, the number of experts when collapsed
        onto `experts_per_token` of them)."""
        if not (self.z_loss or self.router_aux):
            loss = self.loss(engine, tensors)
            return loss, loss, {}
        outputs = self._forward(
            engine, tensors, **({"output_router_logits": True} if self.router_aux else {})
        )
        terms = {}
        if self.z_loss:
            loss, terms["z_squared"] = self.with_z(outputs.logits, tensors[1])
            objective = loss + self.z_loss * terms["z_squared"]
        else:
            loss = objective = self.cross_entropy(outputs.logits, tensors[1])
        if self.router_aux:
            terms["router_balance"] = outputs.aux_loss
            objective = objective + self.router_aux * outputs.aux_loss
        return loss, objective, terms

    def loss(self, engine, tensors, reduction: str = "mean"):
        if self.fused_loss and engine.module.training and reduction == "mean":
            # Liger's fused linear cross-entropy: the mean loss straight from the hidden states, no logits
            return self._forward(engine, tensors, shift_labels=tensors[1]).loss
        return self.cross_entropy(self._logits(engine, tensors), tensors[1], reduction)

    def _logits(self, engine, tensors):
        return self._forward(engine, tensors).logits

    def _forward(self, engine, tensors, **extra):
        from llmforge.model.attention import model_inputs

        input_ids, _, position_ids = tensors
        return engine(**model_inputs(input_ids, position_ids, self.spec.attention), **extra)

    def validate(self, engine) -> float:
        """Mean loss over the first windows of the validation split, dealt evenly to all processes (ZeRO-3 needs
        every process to run the same number of forward passes)."""
        import torch
        import torch.distributed as dist

        config = self.config
        per_rank = min(config.eval.batches * config.micro_batch_size, len(self.val_data) // self.world)
        indices = self.val_data.in_order(per_rank * self.world, self.rank, self.world)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        engine.eval()
        with torch.no_grad():
            for first in range(0, len(indices), config.micro_batch_size):
                batch = self.val_data.gather(indices[first : first + config.micro_batch_size])
                tensors = self._tensors(batch)
                total[0] += self.loss(engine, tensors, reduction="sum").double()
                total[1] += tensors[1].numel()
        engine.train()
        dist.all_reduce(total)
        return float(total[0] / total[1])

    def _report_first_step(self, step: int, seconds: float, steady: float) -> None:
        """What the first step of this invocation cost beyond a steady one: torch.compile when on (and FlexAttention's
        kernels), allocations, autotuning. Logged, and written to metrics.jsonl as a `first_step` event."""
        extra = max(0.0, seconds - steady)
        why = "compiling, allocations" if self.spec.compile else "allocations, warm-up"
        self.reporter.event(f"step {step} took {seconds:.1f} s, {extra:.1f} s more than a steady step ({why})",
                            event="first_step", step=step, first_step_seconds=round(seconds, 3),
                            steady_step_seconds=round(steady, 3), first_step_extra_seconds=round(extra, 3),
                            compiled=self.spec.compile)  # fmt: skip

    def _report_estimate(self, seconds_per_step: float, step: int) -> None:
        if self.rank != 0:
            return
        from llmforge.console import log

        remaining = (self.spec.steps - step) * seconds_per_step
        log(f"measured {self.config.batch_tokens / seconds_per_step:,.0f} tokens/s over steps {step - 2}-{step}: "
            f"about {_duration(remaining)} to go for {self.spec.steps - step:,} more steps")  # fmt: skip

    # -- the result -------------------------------------------------------------------------------------------

    def save_model(self, engine) -> None:
        """Rank 0 writes the trained weights as a Hugging Face directory (tokenizer and chat template included)
        at the root of the work dir. ZeRO-3 shards are gathered first (every process takes part)."""
        import torch.distributed as dist

        if engine.zero_optimization_partition_weights():
            state = engine._zero3_consolidated_16bit_state_dict()
        else:
            state = engine.module.state_dict() if self.rank == 0 else None
        if self.rank == 0:
            save_hf_model(self.spec, state)
        dist.barrier()


def token_cross_entropy(logits, targets, reduction: str = "mean"):
    """Next-token cross-entropy in float32 over every position of (rows, seq, vocabulary) logits."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), reduction=reduction)


def cross_entropy_and_z(logits, targets):
    """token_cross_entropy's mean, and the mean log(Z)^2 over the same positions: PaLM's z-loss term, Z the softmax
    normaliser (log Z is the logsumexp of a position's logits)."""
    import torch.nn.functional as F

    flat = logits.float().view(-1, logits.size(-1))
    return F.cross_entropy(flat, targets.view(-1)), flat.logsumexp(-1).pow(2).mean()


def first_step_extra(records: list[dict[str, Any]]) -> dict[str, float]:
    """`first_step_extra_seconds` of the last invocation that measured it (metrics.jsonl's `first_step` events)."""
    events = [r for r in records if r.get("event") == "first_step"]
    return {"first_step_extra_seconds": events[-1]["first_step_extra_seconds"]} if events else {}


def save_hf_model(spec: RunSpec, state: dict[str, Any]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    from transformers.utils.logging import disable_progress_bar

    from llmforge.data.tokenizer import load_tokenizer
    from llmforge.model.loading import save_model_payload

    unset_hf_deepspeed_config()  # a whole model this time, not ZeRO-3 shards
    disable_progress_bar()  # the run's own progress display is on the terminal
    config = AutoConfig.for_model(**spec.model_config)
    config.use_cache = True
    with torch.device("meta"):  # no random initialisation of weights about to be replaced (minutes for a 7b)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.float().cpu() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise LLMForgeError(
            f"the trained weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    tokenizer = load_tokenizer(Path(spec.tokens_dir) / "tokenizer")
    save_model_payload(model, tokenizer, Path(spec.work_dir))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
