"""What sft, dpo and grpo share: their settings, and the run in the user's process, from a dataset and a model to
the artifact.

`run_posttrain` checks every record of the dataset before any compute (llmforge.data.records, the stage's
validator and checks), writes the normalised records and a job file into the staging directory, trains (in this
process, or in workers started by llmforge.train.launch when `--nproc` > 1, `--zero` or a hostfile is set; the
job itself is llmforge.train.trl_job), then turns the final weights into the artifact: a model, an adapter
(`--lora`) or a merged model (`--lora --merge`). `--dry-run` prints the plan (llmforge.train.posttrain_plan).

Nothing non-finite is published: training stops at the first step whose loss, gradient norm or weights are inf or
NaN (trl_job.FiniteGuard, exit 1, the last complete checkpoint kept), and the final weights are checked once more
before the artifact is written.

Chaining: an adapter input is loaded on its base. With `--lora` the same adapter keeps training (TRL keeps a frozen
copy of it as the DPO/GRPO reference) and the output is an adapter on the same base; without `--lora` the adapter
is merged into its base first and every weight is trained.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from llmforge import machine
from llmforge.artifacts import EVAL_DATA, InputRef, run_stage
from llmforge.config import StageConfig, runtime_field
from llmforge.console import log, warn
from llmforge.data.records import Records, Validator, dataset_ref, held_out, read_records
from llmforge.errors import InputError, LLMForgeError
from llmforge.files import write_json, write_jsonl
from llmforge.train import checkpoint as ckpt
from llmforge.train import launch
from llmforge.train.stats import first_and_final

CHECKPOINTS = "checkpoints"
LOGS = "logs"  # unhashed: job file, normalised dataset, worker result
METRICS = "metrics.jsonl"
FINAL = "final"  # checkpoints/final: what the trainer saved at the end, turned into the payload afterwards
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
JOB_KIND = "posttrain"  # the worker's name for a Job file
REWARD_MODEL = "reward-model"  # the kind `llmforge reward` writes


# ---------------------------------------------------------------------------------------------------------------
# Settings


class LoraSettings(StageConfig):
    enabled: bool = Field(False, description="Train a LoRA adapter on the frozen model (output: an adapter)")
    rank: int = Field(16, ge=1, description="LoRA rank r (8-16 for style, 32-64 to add knowledge)")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha; none = 2 x rank")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Layers that get adapters: all-linear (attention and MLP) or a list of names",
    )
    qlora: bool = Field(
        False,
        description="QLoRA: hold the frozen base in 4-bit NF4 with double quantization (bitsandbytes, CPU or GPU)",
    )
    merge: bool = Field(
        False, description="Merge the trained adapter into its base and write a full model artifact"
    )

    @model_validator(mode="after")
    def _resolve(self):
        if self.alpha is None:
            self.alpha = 2 * self.rank
        if self.qlora or self.merge:
            if not self.enabled:
                self.enabled = True
        return self


class PostTrainConfig(StageConfig):
    """Settings every post-training stage has; stages subclass it and change defaults where theirs differ."""

    epochs: float = Field(1.0, gt=0, description="Passes over the dataset")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 = run the epochs")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate; none = the stage's default for full or LoRA training"
    )
    batch_size: int = Field(8, ge=1, description="Records per device per step (before gradient accumulation)")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step")
    max_length: int = Field(
        1024, ge=8, description="Longest training sequence in tokens (longer is truncated)"
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent warming up the rate")
    lr_scheduler: str = Field("cosine", description="Learning-rate schedule after warmup (transformers name)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm")
    seed: int = Field(0, description="Seed for initialisation of adapters, data order and sampling")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA / QLoRA adapter settings")
    eval_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="sft, dpo: hold out this share of the records (chosen by --seed, not trained on) and measure "
        "the loss on them every eval_steps and at the end; 0 = none (or --eval-data)",
    )
    eval_data: str | None = runtime_field(
        None,
        description="sft, dpo: held-out records of the training data's shape, measured as --eval-fraction's are "
        "(their content, not their path, is an input of the artifact)",
    )
    eval_steps: int | None = runtime_field(
        None,
        ge=1,
        description="Measure the held-out records every N steps (and at the end); none = save_steps",
    )
    zero: int | None = runtime_field(
        None,
        ge=0,
        le=3,
        description="DeepSpeed ZeRO stage 0-3 (runs under the launcher); none = no DeepSpeed",
    )
    offload: Literal["none", "cpu"] = runtime_field(
        "none", description="DeepSpeed offload of optimizer states (and ZeRO-3 parameters) to CPU memory"
    )
    nproc: int = runtime_field(1, ge=1, description="Training processes on this node (torchrun)")
    hostfile: str | None = runtime_field(
        None,
        description="Multi-node: a hostfile ('HOST slots=N' lines) for the deepspeed launcher; OUT must be on a "
        "filesystem every node shares",
    )
    chat_template: str | None = runtime_field(
        None,
        description="A Jinja chat template file to train chats with, saved into the output's tokenizer (it replaces "
        "the model's; its bytes, not its path, are an input of the artifact); none = the model's own, or a default "
        "for a model without one",
    )
    gradient_checkpointing: bool = runtime_field(False, description="Recompute activations to save memory")
    save_steps: int = runtime_field(50, ge=1, description="Save a resumable checkpoint every N steps")
    keep_checkpoints: int = runtime_field(2, ge=1, description="Checkpoints kept in OUT/checkpoints")
    logging_steps: int = runtime_field(1, ge=1, description="Log metrics every N steps")

    def evaluates(self) -> bool:
        """A held-out set is measured during training (--eval-fraction or --eval-data)."""
        return self.eval_fraction > 0 or self.eval_data is not None

    def uses_launcher(self) -> bool:
        """Training runs in worker processes (torchrun or the deepspeed launcher), not in the user's process."""
        return self.nproc > 1 or self.zero is not None or self.hostfile is not None

    def world_size(self) -> int:
        """Training processes in all (reads the hostfile when there is one)."""
        return launch.world_size(self.nproc, self.hostfile)


def resolve_learning_rate(config: PostTrainConfig, full: float, lora: float) -> PostTrainConfig:
    """The config with its learning rate filled in, so the manifest records the rate actually used."""
    if config.learning_rate is not None:
        return config
    return type(config).model_validate(
        {**config.model_dump(), "learning_rate": lora if config.lora.enabled else full}
    )


# the MLP's names in transformers' decoders and Mixtral's original checkpoints: targeting them (or all-linear) on a
# mixture of experts puts LoRA on its expert tensors
MLP_MODULES = {"gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"}


def resolve_lora_dropout(config: PostTrainConfig, source, new_adapter: bool) -> PostTrainConfig:
    """LoRA's dropout for this model (`new_adapter`: false when an input adapter trains on with its own). On a
    mixture of experts peft adapts the experts (3-D tensors in transformers 5) and the router through its parameter
    wrapper, which takes no dropout, so there the default becomes 0 (and the artifact records 0); a dropout asked
    for is refused in one line instead of failing in peft."""
    from llmforge.model.llama import experts_of

    lora = config.lora
    targets = lora.target_modules
    names = {targets} if isinstance(targets, str) else set(targets)
    mlp = targets == "all-linear" or bool(MLP_MODULES & names)
    if not (lora.enabled and lora.dropout and mlp and new_adapter):
        return config
    base = source.base or source
    if not experts_of(model_config_of(base))[0]:
        return config
    if "dropout" in lora.model_fields_set:
        raise InputError(f"lora.dropout {lora.dropout:g}: peft's LoRA on the experts and router of {base.path} (a "
                         "mixture of experts) takes no dropout; set lora.dropout=0, or lora.target_modules to "
                         "the attention projections")  # fmt: skip
    log(f"lora.dropout 0: {base.path} is a mixture of experts (peft's LoRA on its experts takes no dropout)")
    return config.model_copy(update={"lora": lora.model_copy(update={"dropout": 0.0})})


def model_config_of(source) -> dict[str, Any]:
    """A model's config.json as a dict (a hub model's from the local cache)."""
    path = Path(source.path) / "config.json"
    if source.kind != "hub" and path.is_file():
        return json.loads(path.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path).to_dict()


def output_kind(config: PostTrainConfig, stage: Stage | None = None) -> str:
    if stage is not None and stage.score_head:
        return REWARD_MODEL
    return "adapter" if config.lora.enabled and not config.lora.merge else "model"


def qlora_unavailable() -> str | None:
    """Why QLoRA cannot run here, or None when it can (bitsandbytes' 4-bit layers run on CPU and CUDA alike)."""
    if not machine.has_package("bitsandbytes"):
        return ("--qlora needs the bitsandbytes package (pip install 'llmforge[qlora]' or bitsandbytes); "
                "use --lora to train an adapter on the full-precision base")  # fmt: skip
    return None


def qlora_compute_dtype() -> str:
    """What QLoRA's 4-bit layers compute in: bf16 where training runs in bf16 (a GPU with bf16), else float32."""
    return "bfloat16" if machine.bf16_supported() else "float32"


def qlora_precision() -> str:
    """How QLoRA holds the frozen base while training (the plan and the logs say it)."""
    return (f"4-bit NF4 with double quantization (bitsandbytes), compute dtype {qlora_compute_dtype()}; "
            "embeddings, norms and the output head in float32")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The stage run (user process)


@dataclass
class Stage:
    """What one post-training stage plugs into the shared run."""

    name: str
    module: str  # llmforge.stages.<module>, imported by workers to build the trainer
    validate: Callable[[PostTrainConfig], Validator]
    make_trainer: Callable[
        ..., Any
    ]  # (config, model, tokenizer, dataset, eval_dataset, peft_config, args, callbacks, shape)
    summarize: Callable[[list[dict]], dict[str, Any]]
    default_rates: tuple[float, float]  # learning rate: full fine-tuning, LoRA
    check: Callable[[Records, Any, PostTrainConfig], None] | None = None  # extra checks needing the tokenizer
    describe: Callable[[PostTrainConfig], list[tuple[str, str]]] | None = None  # the stage's rows in the plan
    # the rows the trainer gets, when not the records as validated: (records, tokenizer, config, template, stop ids)
    prepare: Callable[..., list[dict]] | None = None
    # more inputs of the artifact than the model, the data and the files given for the run (grpo's reward models)
    inputs: Callable[[PostTrainConfig], list[InputRef]] | None = None
    # trains a one-output score head on the decoder instead of the LM head: a reward model (llmforge reward)
    score_head: bool = False


@dataclass
class Job:
    """Everything a training process needs; written to OUT.partial/logs/job.json (absolute paths)."""

    stage: str
    module: str
    config: dict[str, Any]
    model: str
    data: str
    work: str
    shape: str
    chat_template: str | None = None  # the template text chats are rendered with (set on the tokenizer)
    eval_data: str | None = None  # the held-out rows, prepared as the training rows are

    def save(self, path: Path) -> None:
        write_json(path, {"kind": JOB_KIND, **asdict(self)})

    @classmethod
    def load(cls, path: str | Path) -> Job:
        fields = json.loads(Path(path).read_text())
        fields.pop("kind", None)
        return cls(**fields)


def open_model(path: str | Path, stage: str):
    """The model to train: a model or adapter artifact or a Hugging Face directory (hub ids: cached, or with
    --online); for reward also a reward model, trained further."""
    from llmforge.model.loading import resolve_model

    source = resolve_model(path, stage, reward=stage == "reward")
    if source.kind == "quantized-model":
        raise InputError(f"{stage} trains a model or adapter; {path} is a quantized-model artifact (made by "
                         "`llmforge quantize`): train its source model instead, or use --qlora on it")  # fmt: skip
    if source.is_adapter and source.base is not None:
        from llmforge.data.tokenizer import same_vocabulary
        from llmforge.model.loading import tokenizer_dir

        ours, base = source.tokenizer_fingerprint, source.base.tokenizer_fingerprint
        # the chat template may differ (trained with --chat-template); the vocabulary may not
        vocabulary = same_vocabulary(tokenizer_dir(source), tokenizer_dir(source.base))
        if ours and base and ours != base and not vocabulary:
            raise InputError(
                f"{path}: the adapter's tokenizer differs from its base model's ({source.base.path})"
            )
    return source


def run_posttrain(stage: Stage, config: PostTrainConfig, model: str | Path, data: str | Path, out: str | Path,
                  force: bool = False, callbacks: list | None = None, dry_run: bool = False) -> Path | None:  # fmt: skip
    """Validate, train, write the artifact. `callbacks` are extra TrainerCallbacks (in-process runs only).
    `dry_run` validates everything and prints the plan, then stops (nothing loaded or written; returns None)."""
    from llmforge.model.loading import load_tokenizer

    source = open_model(model, stage.name)
    # before the rate: it re-validates the config, after which every setting counts as given
    config = resolve_lora_dropout(config, source, new_adapter=not source.is_adapter or stage.score_head)
    config = resolve_learning_rate(config, *stage.default_rates)
    kind = output_kind(config, stage)
    inputs = [source.ref(), dataset_ref(data, stage.name), *(stage.inputs(config) if stage.inputs else [])]
    if config.chat_template is not None:
        inputs.append(template_input(config.chat_template))
    if config.evaluates():
        if stage.name == "grpo":
            raise InputError("grpo has no held-out loss (eval_fraction, eval_data): score the model with "
                             "`llmforge eval`")  # fmt: skip
        if config.eval_data is not None and config.eval_fraction:
            raise InputError("--eval-data and --eval-fraction both give held-out records; use one")
    if config.eval_data is not None:
        eval_ref = dataset_ref(config.eval_data, stage.name)
        eval_ref.detail["role"] = EVAL_DATA
        inputs.append(eval_ref)
    if not dry_run and up_to_date(out, stage.name, config, inputs):  # nothing to validate or load
        return run_stage(stage.name, kind, config, inputs, out, lambda ctx: None, force=force)
    # stdout carries only the output path: libraries that print or log to stdout (DeepSpeed's logger, TRL) are
    # sent to stderr while they run; run_stage prints the path after the body.
    with contextlib.redirect_stdout(sys.stderr):
        if config.lora.qlora and (reason := qlora_unavailable()):
            raise InputError(reason)
        if stage.score_head and config.lora.qlora and source.is_adapter:
            raise InputError(f"{stage.name} --qlora loads the base in 4 bits, where the input adapter cannot be "
                             "merged first; merge it (`--lora --merge` on the stage that made it) or leave --qlora "
                             "off")  # fmt: skip
        if config.lora.merge and source.is_adapter and not config.lora.enabled:
            raise InputError("--merge merges the adapter this stage trains; it needs --lora")
        if callbacks and config.uses_launcher():
            raise InputError("extra callbacks run in-process only; they cannot be combined with --nproc, --zero "
                             "or a hostfile")  # fmt: skip
        if config.zero is not None:
            from llmforge.train.deepspeed import deepspeed_config

            deepspeed_config(config.zero, config.offload)  # refuses impossible combinations before any work
        config.world_size()  # a hostfile that cannot be used is one line before any work
        records = read_records(data, stage.name, stage.validate(config))
        evaluated = None
        if config.eval_data is not None:
            evaluated = read_records(config.eval_data, stage.name, stage.validate(config))
            if evaluated.shape != records.shape:
                raise InputError(f"{evaluated.locations[0]}: --eval-data holds {evaluated.shape!r} records, the "
                                 f"training data {records.shape!r} ({records.locations[0]})")  # fmt: skip
        elif config.eval_fraction:
            records, evaluated = held_out(records, config.eval_fraction, config.seed)
        tokenizer = load_tokenizer(source)
        template = training_template(records, tokenizer, config)
        if template is not None:
            tokenizer.chat_template = template.text
            log(template.note)
        parts = [records] if evaluated is None else [records, evaluated]
        if stage.check is not None:
            for part in parts:
                stage.check(part, tokenizer, config)
        stops = stop_ids(source, tokenizer, template) if stage.prepare is not None else []

        def prepared(part: Records) -> list[dict]:
            return stage.prepare(part, tokenizer, config, template, stops) if stage.prepare else part.items

        rows = prepared(records)
        eval_rows = prepared(evaluated) if evaluated is not None else None
        held = f" ({len(evaluated.items):,} more held out)" if evaluated is not None else ""
        log(f"{stage.name}: {len(records.items):,} {records.shape} records from {data}{held}; "
            f"{describe_method(config, source, stage)}")  # fmt: skip
        if config.lora.qlora:
            log(f"{stage.name}: the frozen base is held in {qlora_precision()}")
        if dry_run:
            from llmforge.train.posttrain_plan import print_plan

            print_plan(stage, config, source, records, kind, evaluated)
            return None

        def body(ctx) -> None:
            with contextlib.redirect_stdout(sys.stderr):
                train_and_write(ctx)

        def train_and_write(ctx) -> None:
            logs = ctx.work / LOGS
            logs.mkdir(exist_ok=True)
            ckpt.discard_unfinished(ctx.work / CHECKPOINTS, ckpt.TRAINER_PREFIX)
            # the workers resume from this checkpoint, whose files are loaded with pickle: checked here, once
            ckpt.verified_latest(ctx.work / CHECKPOINTS, ckpt.TRAINER_PREFIX)
            write_jsonl(logs / "dataset.jsonl", rows)
            if evaluated is not None:
                write_jsonl(logs / "eval.jsonl", eval_rows)
            job = Job(stage=stage.name, module=stage.module, config=config.model_dump(mode="json"),
                      model=_location(source), data=str((logs / "dataset.jsonl").resolve()),
                      work=str(ctx.work.resolve()), shape=records.shape,
                      chat_template=template.text if template else None,
                      eval_data=str((logs / "eval.jsonl").resolve()) if evaluated is not None else None)  # fmt: skip
            job.save(logs / "job.json")
            if config.uses_launcher():
                launch.launch(logs / "job.json", config.nproc, config.hostfile)
            else:
                from llmforge.train.trl_job import train_job

                train_job(job, callbacks=callbacks)
            result = json.loads((logs / "result.json").read_text())
            if stage.score_head:
                write_reward_model(ctx, source, config, template)
            else:
                write_payload(ctx, source, config, kind, template)
            history = result.pop("log_history")
            ctx.stats.update({"records": len(records.items), "shape": records.shape, **result,
                              **stage.summarize(history)})  # fmt: skip
            if template is not None:
                ctx.stats["chat_template"] = template.origin
            if rows is not records.items:
                ctx.stats["examples"] = len(rows)  # sequences trained on: a chat can give more than one
            if evaluated is not None:
                ctx.stats["eval_records"] = len(evaluated.items)

    return run_stage(stage.name, kind, config, inputs, out, body, force=force)


def template_input(path: str) -> InputRef:
    """A user's chat template file, fingerprinted by its bytes alone (not its name or place): it decides what the
    model is trained on. No file count: eval's contamination check reads such entries as training data."""
    from llmforge.files import sha256_file

    file = Path(path)
    if not file.is_file():
        raise InputError(f"--chat-template {path}: no such file (a Jinja chat template file)")
    detail = {"role": "chat template", "bytes": file.stat().st_size}
    return InputRef(path=str(path), kind="raw", fingerprint=sha256_file(file), detail=detail)


def is_chat(records: Records) -> bool:
    return any("messages" in r or isinstance(r.get("prompt"), list) for r in records.items)


def training_template(records: Records, tokenizer, config: PostTrainConfig):
    """The template chats are rendered with (llmforge.data.chat_masks.Template): the user's file, the model's own,
    or a default for a model without one; None for text data and no file (nothing is rendered or changed)."""
    from llmforge.data.chat_masks import resolve_template

    if config.chat_template is None and not is_chat(records):
        return None
    return resolve_template(tokenizer, config.chat_template)


def stop_ids(source, tokenizer, template) -> list[int]:
    """The tokens that end the model's turn (its generation config sits with the weights: an adapter's base)."""
    from llmforge.data.chat_masks import stop_token_ids

    weights = source.base if source.is_adapter and source.base is not None else source
    return stop_token_ids(tokenizer, None if weights.kind == "hub" else weights.path, template)


def _location(source) -> str:
    """Where training processes load the model from: an absolute directory, or a hub id."""
    return source.path if source.kind == "hub" else str(Path(source.path).resolve())


def up_to_date(out: str | Path, stage: str, config: PostTrainConfig, inputs: list[InputRef]) -> bool:
    from llmforge.artifacts import fingerprint_of, holds

    return holds(out, fingerprint_of(stage, config, inputs))


def describe_method(config: PostTrainConfig, source, stage: Stage | None = None) -> str:
    if not config.lora.enabled:
        return "full fine-tuning" + (" of the adapter merged into its base" if source.is_adapter else "")
    method = "QLoRA" if config.lora.qlora else "LoRA"
    if source.is_adapter and not (stage and stage.score_head):
        return f"{method}: continuing the input adapter on its base"
    merged = ", on the input adapter merged into its base" if source.is_adapter else ""
    return (
        f"{method} rank {config.lora.rank}, alpha {config.lora.alpha}, dropout {config.lora.dropout}{merged}"
    )


def write_payload(ctx, source, config: PostTrainConfig, kind: str, template=None) -> None:
    """checkpoints/final -> the artifact root: a model directory, an adapter directory or a merged model. The chat
    template trained with goes into the output's tokenizer, so that serving and eval render chats the same way."""
    import transformers

    from llmforge.data.tokenizer import tokenizer_fingerprint
    from llmforge.model.loading import (
        ModelSource,
        base_model_entry,
        load_model,
        load_tokenizer,
        save_model_payload,
    )

    transformers.utils.logging.disable_progress_bar()
    final = ctx.work / CHECKPOINTS / FINAL
    tokenizer = load_tokenizer(source)
    retemplated = template is not None and template.text != tokenizer.chat_template
    if retemplated:
        tokenizer.chat_template = template.text
    base = source.base if source.is_adapter else source
    if kind == "adapter" or config.lora.merge:
        for name in ADAPTER_FILES:  # only the trained adapter ("default"), not TRL's frozen reference copy
            if (final / name).is_file():
                shutil.copy2(final / name, ctx.work / name)
        _point_adapter_at(ctx.work / "adapter_config.json", base)
        if config.lora.merge:
            if config.lora.qlora:  # a 4-bit base cannot hold the merged weights: the float one can
                log(f"{ctx.stage}: merging the adapter into the base reloaded un-quantized from {base.path} (in "
                    "the dtype it is stored in), not into the 4-bit copy it was trained on")  # fmt: skip
            adapter = ModelSource(path=str(ctx.work), kind="hf-dir", fingerprint="", base=base)
            merged = load_model(adapter, dtype="auto", merge=True)
            refuse_non_finite(merged.state_dict().items(), ctx)
            for name in (*ADAPTER_FILES, "README.md"):
                (ctx.work / name).unlink(missing_ok=True)
            save_model_payload(merged, tokenizer, ctx.work)
        else:
            refuse_non_finite(adapter_weights(ctx.work), ctx)
            tokenizer.save_pretrained(ctx.work)
            ctx.extra["base_model"] = base_model_entry(base, ctx.out)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(final, dtype="auto")
        refuse_non_finite(model.state_dict().items(), ctx)
        save_model_payload(model, tokenizer, ctx.work)
    shutil.rmtree(final, ignore_errors=True)
    ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)
    expected = source.tokenizer_fingerprint
    if expected and expected != ctx.extra["tokenizer_fingerprint"] and not retemplated:
        warn("the tokenizer written differs from the input model's (fingerprint changed on save)")


def write_reward_model(ctx, source, config: PostTrainConfig, template=None) -> None:
    """checkpoints/final -> a reward model: the decoder with its trained score head, as a Hugging Face
    sequence-classification directory (`AutoModelForSequenceClassification` loads it; num_labels 1). Trained with
    LoRA, the adapter (with the score head it trained whole) is merged into the model it started from, so the
    output is always a full model; its tokenizer has the pad token the score is read before."""
    import transformers
    from peft import PeftModel

    from llmforge.data.tokenizer import tokenizer_fingerprint
    from llmforge.model.loading import load_model, load_tokenizer

    transformers.utils.logging.disable_progress_bar()
    final = ctx.work / CHECKPOINTS / FINAL
    tokenizer = load_tokenizer(source)
    if template is not None:
        tokenizer.chat_template = template.text
    # as RewardTrainer trained it: the score is read at the last token before the padding
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.lora.enabled:  # the trained head comes back from the adapter (peft's modules_to_save)
        start = load_model(source, dtype="auto", merge=True, score_head=True)
        model = PeftModel.from_pretrained(start, final).merge_and_unload()
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(final, dtype="auto")
    model.config.pad_token_id = tokenizer.pad_token_id
    refuse_non_finite(model.state_dict().items(), ctx)
    model.save_pretrained(ctx.work, safe_serialization=True)
    tokenizer.save_pretrained(ctx.work)
    shutil.rmtree(final, ignore_errors=True)
    ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)


def non_finite(named_tensors) -> list[str]:
    """The names of the floating-point tensors holding inf or NaN (one device sync for all of them, not one each:
    the training guard asks every step)."""
    import torch

    named = [(name, tensor) for name, tensor in named_tensors if tensor.is_floating_point()]
    if not named:
        return []
    checks = [tensor.isfinite().all() for _, tensor in named]
    finite = torch.stack([check.to(checks[0].device) for check in checks]).tolist()
    return [name for (name, _), ok in zip(named, finite, strict=True) if not ok]


def refuse_non_finite(named_tensors, ctx) -> None:
    """The last check before the artifact is written: a model with any inf or NaN weight is never published."""
    bad = non_finite(named_tensors)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise LLMForgeError(f"{ctx.stage}: the trained weights hold inf or NaN values ({bad[0]}{more}); nothing is "
                            f"published and the run's checkpoints stay in {ctx.work / CHECKPOINTS}")  # fmt: skip


def adapter_weights(directory: Path):
    """(name, tensor) of the adapter peft saved in `directory`."""
    import torch
    from safetensors.torch import load_file

    if (directory / "adapter_model.safetensors").is_file():
        return load_file(directory / "adapter_model.safetensors").items()
    return torch.load(directory / "adapter_model.bin", weights_only=True).items()


def _point_adapter_at(adapter_config: Path, base) -> None:
    """peft records the directory the base was loaded from; make it the base model's own path (absolute)."""
    settings = json.loads(adapter_config.read_text())
    settings["base_model_name_or_path"] = str(Path(base.path).resolve()) if base.kind != "hub" else base.path
    write_json(adapter_config, settings)


# ---------------------------------------------------------------------------------------------------------------
# Summaries for the manifest


def series(history: list[dict], key: str) -> list[float]:
    return [float(entry[key]) for entry in history if isinstance(entry.get(key), int | float)]


def first_final(history: list[dict], key: str, name: str | None = None) -> dict[str, float]:
    """`<name>_first` and `<name>_final` of a logged series (the vocabulary of `train.stats`)."""
    return first_and_final([round(v, 6) for v in series(history, key)], name or key.replace("/", "_"))


def final_value(history: list[dict], key: str, name: str | None = None) -> dict[str, float]:
    values = series(history, key)
    return {name or key.replace("/", "_"): round(values[-1], 6)} if values else {}
