"""The post-training job inside a training process: load the policy, build the stage's TRL trainer, train
(resuming from the last complete checkpoint), save checkpoints/final and report back in logs/result.json. A step
whose loss, gradient norm or weights are not finite stops the run before it is logged or saved (FiniteGuard).

It runs in the user's process for a single-process run, or in every worker (`python -m llmforge.train.worker
OUT.partial/logs/job.json`) under torchrun or the deepspeed launcher. `llmforge.train.posttrain` prepared the job
(validated records, settings); this module is the only one that imports torch, transformers, peft and TRL.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from peft import LoraConfig, PeftModel, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from llmforge import machine
from llmforge.console import log, progress
from llmforge.errors import InputError, LLMForgeError
from llmforge.files import read_jsonl, write_json, write_jsonl
from llmforge.model.loading import load_model, load_tokenizer
from llmforge.train import checkpoint as ckpt
from llmforge.train.posttrain import (
    CHECKPOINTS,
    FINAL,
    LOGS,
    METRICS,
    Job,
    PostTrainConfig,
    Stage,
    non_finite,
    open_model,
    qlora_compute_dtype,
)

# torch.multinomial's error for inf or NaN probabilities: how an overflowing policy shows up while GRPO samples
SAMPLING_NON_FINITE = "probability tensor contains either `inf`, `nan`"


def train_job(job: Job, callbacks: list | None = None) -> None:
    """Build the stage's TRL trainer, train (resuming from the last checkpoint), save checkpoints/final."""
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    module = importlib.import_module(f"llmforge.stages.{job.module}")
    stage: Stage = module.STAGE
    config = module.Config.model_validate(job.config)
    work = Path(job.work)
    if config.zero is not None:
        from llmforge.train.deepspeed import init_distributed

        init_distributed()  # gloo on CPU, without building DeepSpeed's shared-memory op
    arguments = training_arguments(config, work)  # before loading: ZeRO-3 then loads the model partitioned
    source = open_model(job.model, stage.name)
    tokenizer = load_tokenizer(source)
    if job.chat_template is not None:  # the user's, or a default for a model without one: TRL renders with it
        tokenizer.chat_template = job.chat_template
    # a new score head (reward) starts from seeded weights: the same run gives the same model
    transformers.set_seed(config.seed)
    model, peft_config = load_policy(source, config, score_head=stage.score_head)
    dataset = to_dataset(read_jsonl(job.data))
    eval_dataset = to_dataset(read_jsonl(job.eval_data)) if job.eval_data else None
    checkpoints = work / CHECKPOINTS
    found = ckpt.latest(checkpoints, ckpt.TRAINER_PREFIX)
    last, resumed_step = (str(found[0]), found[1]["step"]) if found else (None, 0)
    # the held-out records are measured before the first step too (the input model's figures, which training is
    # compared with); a resumed run has them in the checkpoint's log already
    arguments["eval_on_start"] = config.evaluates() and last is None
    display = LiveMetrics(work / METRICS, stage.name, resumed_step)
    trainer = stage.make_trainer(config=config, model=model, tokenizer=tokenizer, dataset=dataset,
                                 eval_dataset=eval_dataset, peft_config=peft_config, arguments=arguments,
                                 callbacks=[display, MarkComplete(), *(callbacks or [])], shape=job.shape)  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout, which carries only the output path
    guard = FiniteGuard(trainer, stage.name, config)
    trainer.add_callback(guard)
    trainable, total = parameter_counts(trainer.model)
    if trainer.is_world_process_zero():
        log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3g}%)")
        if last:
            log(f"[cyan]resuming[/] from {Path(last).name} (step {resumed_step})")
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=last)
        if eval_dataset is not None and not measured_at(trainer.state.log_history, trainer.state.global_step):
            trainer.evaluate()  # the final model's held-out figures, unless the last step measured them
    except RuntimeError as exc:
        if SAMPLING_NON_FINITE in str(exc):  # GRPO's rollouts meet an overflowing policy before its loss does
            guard.stop(arguments["output_dir"], trainer.state.global_step + 1,
                       "sampling the rollouts met inf or NaN probabilities (the policy's logits overflow)")  # fmt: skip
        raise
    finally:
        display.close()  # a run that fails leaves no live progress bar over the error
    trainer.save_model(str(checkpoints / FINAL))
    if trainer.is_world_process_zero():
        result = {"trainable_parameters": trainable, "total_parameters": total,
                  "trainable_share": round(trainable / total, 6), "steps": trainer.state.global_step,
                  "resumed_from_step": resumed_step, "train_seconds": round(time.perf_counter() - started, 3),
                  "log_history": trainer.state.log_history}  # fmt: skip
        write_json(work / LOGS / "result.json", result, default=float)


# ---------------------------------------------------------------------------------------------------------------
# Trainer settings and the policy


def training_arguments(config: PostTrainConfig, work: Path) -> dict[str, Any]:
    """Keyword arguments every TRL config takes, from our settings."""
    cpu = not machine.has_cuda()
    arguments = dict(
        output_dir=str(work / CHECKPOINTS),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.keep_checkpoints,
        report_to="none",
        disable_tqdm=True,  # the live display below replaces tqdm
        logging_nan_inf_filter=False,  # log a non-finite loss as it is (the filter logs a made-up one)
        use_cpu=cpu,
        bf16=machine.bf16_supported(),  # TRL defaults to bf16, which a CPU run must not ask for
        gradient_checkpointing=config.gradient_checkpointing,
        dataloader_num_workers=0,
    )
    if config.evaluates():
        arguments.update(eval_strategy="steps", eval_steps=config.eval_steps or config.save_steps,
                         per_device_eval_batch_size=config.batch_size)  # fmt: skip
    if cpu and config.zero is None and config.uses_launcher():
        arguments["ddp_backend"] = "gloo"
    if config.zero is not None:
        from llmforge.train.deepspeed import deepspeed_config

        arguments["deepspeed"] = deepspeed_config(config.zero, config.offload)
    return arguments


def lora_config(config: PostTrainConfig, score_head: bool = False) -> LoraConfig:
    # SEQ_CLS: peft trains the new score head whole beside the adapters (modules_to_save) and saves it with them
    return LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=config.lora.target_modules, task_type="SEQ_CLS" if score_head else "CAUSAL_LM",
                      bias="none")  # fmt: skip


def load_policy(source, config: PostTrainConfig, score_head: bool = False):
    """(model, peft_config): what the trainer gets for this source and these settings. `score_head`: a reward
    model's start, the decoder under a new one-output head (an adapter input merged into its base first)."""
    if config.lora.qlora:
        return _load_4bit(source, config, score_head)
    if score_head:
        model = load_model(source, merge=True, score_head=True).requires_grad_(True)
        return model, (lora_config(config, score_head=True) if config.lora.enabled else None)
    if source.is_adapter:
        if config.lora.enabled:  # continue training the adapter itself
            return load_model(source, trainable_adapter=True), None
        return load_model(source, merge=True).requires_grad_(True), None  # peft left the base weights frozen
    return load_model(source), (lora_config(config) if config.lora.enabled else None)


def _load_4bit(source, config: PostTrainConfig, score_head: bool = False):
    """QLoRA: the frozen base in 4-bit NF4 with double quantization (bitsandbytes' Linear4bit, on CPU or the
    process's GPU), its other weights upcast to float32 by peft, and LoRA (or the input adapter) on top."""
    from transformers import AutoModelForSequenceClassification

    from llmforge.model.loading import quiet_new_head

    compute = getattr(torch, qlora_compute_dtype())
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute)  # fmt: skip
    device = machine.process_device()  # each process quantizes onto its own device
    base = source.base if source.is_adapter else source
    head = {"num_labels": 1} if score_head else {}
    with quiet_new_head():
        model = (AutoModelForSequenceClassification if score_head else AutoModelForCausalLM).from_pretrained(
            base.path, quantization_config=quantization, dtype=compute, device_map={"": device}, **head
        )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if source.is_adapter:
        return PeftModel.from_pretrained(model, source.path, is_trainable=True), None
    return model, lora_config(config, score_head)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) of the policy. ZeRO-3 partitions parameters (their full size is then in ds_numel);
    a 4-bit weight packs two values a byte (its own shape is in quant_state); the frozen copy TRL keeps of a
    continued adapter (adapter "ref") is the reference, not the policy, and the untrained copy peft keeps of a
    module it trains whole (`modules_to_save`: a reward model's head) is not the model's either."""
    trainable = total = 0
    for name, parameter in model.named_parameters():
        if ".ref." in name or ".original_module." in name:
            continue
        quantized = getattr(parameter, "quant_state", None)
        count = (
            math.prod(quantized.shape)
            if quantized is not None
            else getattr(parameter, "ds_numel", parameter.numel())
        )
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total


PLAIN_TYPES = {str: "string", bool: "bool", int: "int64", float: "float64"}


def to_dataset(rows: list[dict]) -> datasets.Dataset:
    """The validated records as a datasets.Dataset, each exactly as written. Left to itself, Arrow takes the columns
    from the first record (a `schema` or `tools` field only later records have would vanish), merges the structs of
    differing records (tool-call arguments would gain other calls' keys as nulls) and refuses mixed types (`tests`
    as a string here and a list there). So every column any record has is kept (None where a record lacks it), and a
    column holding anything but one plain type is stored as JSON, which hands every value back as it was."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    rows = [{column: row.get(column) for column in columns} for row in rows]
    features = {}
    for column in columns:
        kinds = {type(row[column]) for row in rows if row[column] is not None}
        plain = PLAIN_TYPES.get(next(iter(kinds))) if len(kinds) == 1 else None
        if kinds == {list} and all(type(v) is int for row in rows for v in row[column] or ()):
            features[column] = datasets.List(datasets.Value("int64"))  # token ids and masks (sft's chats)
            continue
        features[column] = datasets.Value(plain) if plain else datasets.Json()
    return datasets.Dataset.from_list(rows, features=datasets.Features(features))


# ---------------------------------------------------------------------------------------------------------------
# Callbacks: the checkpoint rule, OUT/metrics.jsonl and a live display


def measured_at(history: list[dict], step: int) -> bool:
    """The held-out records were measured at `step` (a log entry of that step with an eval_ figure)."""
    return any(entry.get("step") == step and any(k.startswith("eval_") for k in entry) for entry in history)


class MarkComplete(TrainerCallback):
    """Writes checkpoint-N/complete.json once every process has saved its part of checkpoint N (the rule of
    llmforge.train.checkpoint: a checkpoint without it was cut short and is never resumed from)."""

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # optimizer shards and RNG states of the other processes are written
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"{ckpt.TRAINER_PREFIX}{state.global_step}"
            ckpt.mark_complete(path, {"step": state.global_step})


class LiveMetrics(TrainerCallback):
    """Appends every log to OUT/metrics.jsonl and shows a progress bar with the latest figures (rank 0)."""

    HEADLINE = ("loss", "reward", "rewards/accuracies", "rewards/margins", "accuracy", "margin", "kl", "learning_rate",
                "eval_loss")  # fmt: skip

    def __init__(self, path: Path, stage: str, resumed_step: int) -> None:
        self.path, self.stage, self.resumed_step = path, stage, resumed_step
        self.progress = self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.path.is_file():  # a resumed run: forget what was logged after the checkpoint it restarts from
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= self.resumed_step]
            write_jsonl(self.path, kept)
        self.progress = progress()
        self.progress.start()
        self.task = self.progress.add_task(self.stage, total=state.max_steps, completed=state.global_step,
                                           unit="steps")  # fmt: skip

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
        if self.progress is not None:
            shown = " ".join(f"{k.split('/')[-1]} {logs[k]:.4g}" for k in self.HEADLINE
                             if isinstance(logs.get(k), int | float))  # fmt: skip
            if shown:  # the closing summary (train_runtime...) leaves the last figures on screen
                self.progress.update(self.task, description=f"{self.stage} {shown}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class Diverged(LLMForgeError):
    """Training produced a non-finite loss, gradient norm or weight (exit 1); nothing of it is published."""


class FiniteGuard(TrainerCallback):
    """Stops the run at the first optimizer step whose loss, gradient norm or trainable weights are not finite,
    before the trainer logs or saves that step: a checkpoint never holds inf or NaN, so the last complete one
    stays a sound place to resume from.

    A rewind (pretrain's answer) needs a loop that can skip a batch; here a non-finite value nearly always comes
    from the settings (a learning rate too high for the model, fp16 overflow) and would come back on replay, so
    the run fails with exit 1, naming the step, what went non-finite and what to change. The loss is the trainer's
    running sum since its last log (`_tr_loss`, kept non-finite with `logging_nan_inf_filter` off), checked
    every step; the gradient norm as logged (logging steps); the weights every step. Every process gets the same
    verdict (the flags are gathered), so they all stop together.
    """

    def __init__(self, trainer, stage: str, config: PostTrainConfig) -> None:
        self.trainer, self.stage, self.config = trainer, stage, config

    def on_train_begin(self, args, state, control, **kwargs):
        bad = self._gathered(0.0, self._non_finite_weights())[1]
        if bad:
            what = (f"the checkpoint resumed from (step {state.global_step})" if state.global_step
                    else "the input model")  # fmt: skip
            raise InputError(f"{self.stage}: {what} already holds inf or NaN weights ({bad}) before any "
                             "training; train from a sound model")  # fmt: skip

    def on_step_end(self, args, state, control, **kwargs):
        running = getattr(self.trainer, "_tr_loss", None)  # transformers' loss sum since its last log
        loss = float(running.detach().float().item()) if running is not None else 0.0
        losses, weights = self._gathered(loss, self._non_finite_weights())
        if (value := next((v for v in losses if not math.isfinite(v)), None)) is not None:
            self.stop(args.output_dir, state.global_step, f"the training loss is {value}")
        if weights:
            self.stop(
                args.output_dir, state.global_step, f"the optimizer step made weights inf or NaN ({weights})"
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        # the gradient norm reaches callbacks only here; the loss too, should transformers drop `_tr_loss`
        for key, name in (("loss", "the logged loss"), ("grad_norm", "the gradient norm")):
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                self.stop(args.output_dir, state.global_step, f"{name} is {value}")

    def _non_finite_weights(self) -> str:
        """The trainable tensors of this process holding inf or NaN, as 'NAME and N more' ('' when none). ZeRO-3
        leaves each process its partition of every weight (ds_tensor)."""
        trainable = ((name, getattr(p, "ds_tensor", p)) for name, p in self.trainer.model.named_parameters()
                     if p.requires_grad)  # fmt: skip
        bad = non_finite(trainable)
        return f"{bad[0]}" + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "") if bad else ""

    def _gathered(self, loss: float, weights: str) -> tuple[list[float], str]:
        """Every process's loss, and which weights are not finite: this process's, "on another process", or ''
        when none anywhere."""
        accelerator = self.trainer.accelerator
        local = torch.tensor([loss, float(bool(weights))], dtype=torch.float32, device=accelerator.device)
        rows = accelerator.gather(local).view(-1, 2).tolist()
        if weights or not any(flag for _, flag in rows):
            return [row[0] for row in rows], weights
        return [row[0] for row in rows], "on another process"

    def stop(self, checkpoints: str, step: int, what: str) -> None:
        """Raise Diverged: what went non-finite at `step`, what is kept, what to do."""
        found = ckpt.latest(Path(checkpoints), ckpt.TRAINER_PREFIX)
        kept = (f"the last complete checkpoint, {found[0].name} (step {found[1]['step']}), stays in {found[0].parent}"
                if found else f"no checkpoint was complete yet (save_steps {self.config.save_steps})")  # fmt: skip
        again = "resumes from that checkpoint" if found else "starts over"
        raise Diverged(f"{self.stage} diverged at step {step}: {what}. Nothing is published; {kept}. Lower the "
                       f"learning rate (now {self.config.learning_rate:g}) or check the data of that step, then "
                       f"re-run with --force (changed settings start over); the same command {again}")  # fmt: skip


class RewardFailures(TrainerCallback):
    """GRPO: the completions each reward failed to score (each scored 0), counted exactly. The reward wrapper
    (llmforge.rewards.load_reward) reports each batch's count through TRL's `log_metric`, which averages over
    batches and processes; `counted` takes those counts instead, and every log gets their sum over the processes
    since the previous log as `rewards/<name>/failures`, so the series adds up to the run's total. A save step is
    made a log step too: counts a checkpoint has not logged would be lost by a resume from it."""

    def __init__(self, labels: list[str]) -> None:
        self.keys = list(dict.fromkeys(f"rewards/{label}/failures" for label in labels))
        self.counts = dict.fromkeys(self.keys, 0)

    def counted(self, reward):
        """`reward` with its failure counts taken here; its other metrics still go to TRL."""

        def scored(*args, log_metric=None, **kwargs):
            def take(name, value):
                if name in self.counts:
                    self.counts[name] += value
                elif log_metric is not None:
                    log_metric(name, value)

            return reward(*args, log_metric=take, **kwargs)

        scored.__name__ = reward.__name__  # TRL logs rewards/<__name__>/mean
        return scored

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        counts = torch.tensor([self.counts[key] for key in self.keys], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            nccl = torch.distributed.get_backend() == "nccl"
            counts = counts.to(f"cuda:{torch.cuda.current_device()}" if nccl else "cpu")
            torch.distributed.all_reduce(counts)
        self.counts = dict.fromkeys(self.keys, 0)
        if "train_runtime" in logs and not counts.any():
            return  # the end-of-training summary: only counts of steps no log has carried yet belong there
        for key, count in zip(self.keys, counts.tolist(), strict=True):
            logs[key] = state.log_history[-1][key] = int(count)  # the history is what the manifest sums
