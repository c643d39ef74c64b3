"""What sft, dpo and grpo share: settings, dataset validation, model/adapter loading, the TRL run, the artifact.

The user's process runs the stage under `run_stage`: it validates the dataset (every record, before any compute),
writes the normalised records and a job file into the staging directory, trains (in process, or in workers under
torchrun when `--nproc` > 1 or `--zero` is set), then turns the final weights into the artifact: a model, an
adapter (`--lora`) or a merged model (`--lora --merge`). Workers run `python -m llmforge.train.posttrain JOB`.

Chaining: an adapter input is loaded on its base. With `--lora` the same adapter keeps training (TRL keeps a frozen
copy of it as the DPO/GRPO reference) and the output is an adapter on the same base; without `--lora` the adapter
is merged into its base first and every weight is trained.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from pydantic import Field, model_validator

from llmforge import machine
from llmforge.artifacts import MANIFEST, Artifact, InputRef, expand_paths, open_artifact, raw_input, run_stage
from llmforge.config import StageConfig, runtime_field
from llmforge.console import log, warn
from llmforge.errors import InputError, LLMForgeError, json_lines, where
from llmforge.files import read_jsonl, write_json, write_jsonl
from llmforge.train.stats import first_and_final

CHECKPOINTS = "checkpoints"
LOGS = "logs"  # unhashed: job file, normalised dataset, worker result
METRICS = "metrics.jsonl"
FINAL = "final"  # checkpoints/final: what the trainer saved at the end, turned into the payload afterwards
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")


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
        False, description="QLoRA: hold the frozen base in 4-bit NF4 (bitsandbytes; needs a CUDA GPU)"
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
    gradient_checkpointing: bool = runtime_field(False, description="Recompute activations to save memory")
    save_steps: int = runtime_field(50, ge=1, description="Save a resumable checkpoint every N steps")
    keep_checkpoints: int = runtime_field(2, ge=1, description="Checkpoints kept in OUT/checkpoints")
    logging_steps: int = runtime_field(1, ge=1, description="Log metrics every N steps")


def resolve_learning_rate(config: PostTrainConfig, full: float, lora: float) -> PostTrainConfig:
    """The config with its learning rate filled in, so the manifest records the rate actually used."""
    if config.learning_rate is not None:
        return config
    return type(config).model_validate(
        {**config.model_dump(), "learning_rate": lora if config.lora.enabled else full}
    )


def uses_launcher(config: PostTrainConfig) -> bool:
    return config.nproc > 1 or config.zero is not None


def output_kind(config: PostTrainConfig) -> str:
    return "adapter" if config.lora.enabled and not config.lora.merge else "model"


def qlora_unavailable() -> str | None:
    """Why QLoRA cannot run here, or None when it can."""
    if not machine.has_cuda():
        return ("--qlora needs bitsandbytes' 4-bit kernels on a CUDA GPU, and this machine has no GPU "
                "(no CUDA device visible to torch); use --lora to train an adapter on the full-precision base")  # fmt: skip
    if not machine.has_package("bitsandbytes"):
        return "--qlora needs the bitsandbytes package (pip install bitsandbytes); use --lora without it"
    return None


# Flags every post-training command has: parameter name -> (config key, option names)
COMMON_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lora": ("lora.enabled", ("--lora",)),
    "qlora": ("lora.qlora", ("--qlora",)),
    "merge": ("lora.merge", ("--merge",)),
    "rank": ("lora.rank", ("--rank",)),
    "epochs": ("epochs", ("--epochs",)),
    "max_steps": ("max_steps", ("--max-steps",)),
    "learning_rate": ("learning_rate", ("--lr", "--learning-rate")),
    "batch_size": ("batch_size", ("--batch-size",)),
    "max_length": ("max_length", ("--max-length",)),
    "zero": ("zero", ("--zero",)),
    "offload": ("offload", ("--offload",)),
    "nproc": ("nproc", ("--nproc",)),
}
_FLAG_TYPES = {"lora": bool, "qlora": bool, "merge": bool, "rank": int, "epochs": float, "max_steps": int,
               "learning_rate": float, "batch_size": int, "max_length": int, "zero": int, "offload": str,
               "nproc": int}  # fmt: skip


def common_flags(config: type[PostTrainConfig]) -> SimpleNamespace:
    """Typer parameter types for COMMON_FLAGS, documented from `config` (its defaults, its descriptions)."""
    from typing import Annotated

    from llmforge.options import flag

    return SimpleNamespace(**{name: Annotated[_FLAG_TYPES[name] | None, flag(config, key, *names)]
                              for name, (key, names) in COMMON_FLAGS.items()})  # fmt: skip


def model_argument():
    import typer

    return typer.Argument(
        help="The model to train: a model or adapter artifact, or a Hugging Face directory."
    )


def data_argument():
    import typer

    return typer.Argument(help="The dataset: a JSONL or Parquet file (or a folder or glob of them), or a "
                               "documents artifact.")  # fmt: skip


def common_values(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted config keys for the common flags a command received (None = not given)."""
    return {key: values[name] for name, (key, _) in COMMON_FLAGS.items()}


# ---------------------------------------------------------------------------------------------------------------
# Datasets: every record checked before any compute


@dataclass
class Records:
    """Validated, normalised records of one dataset."""

    items: list[dict[str, Any]]
    shape: str
    locations: list[str]  # file:line of each record, for errors found later (chat template masks)


Validator = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


def _jsonl_lines(file: str) -> Iterator[tuple[str, Any]]:
    from llmforge.data.documents import read_lines

    # a damaged .gz is named with the last line read
    for number, record in json_lines(read_lines(Path(file)), file):
        yield where(file, number), record


def _json_rows(file: str) -> Iterator[tuple[str, Any]]:
    """A .json file: JSON lines, or one JSON array of records."""
    from llmforge.data.documents import damage_named

    opener = gzip.open if file.endswith(".gz") else open
    with damage_named(Path(file), [0]), opener(file, "rt", encoding="utf-8") as handle:
        head = handle.read(1024).lstrip()
    if not head.startswith("["):
        yield from _jsonl_lines(file)
        return
    with damage_named(Path(file), [0]), opener(file, "rt", encoding="utf-8") as handle:
        try:
            records = json.load(handle)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where(file, exc.lineno)}: not valid JSON ({exc.msg})") from None
    for number, record in enumerate(records, 1):
        yield where(file, record=str(number)), record


def _parquet_rows(file: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as exc:
        raise InputError(f"{file}: not a readable Parquet file ({exc})") from None
    for number, row in enumerate(table.to_pylist(), 1):
        yield where(file, record=str(number)), row


def _documents_rows(artifact: Artifact) -> Iterator[tuple[str, Any]]:
    from llmforge.data.documents import document_files

    for file in document_files(artifact):
        for location, document in _jsonl_lines(str(file)):
            if isinstance(
                document, dict
            ):  # a document's metadata can carry the other fields (prompt, answer...)
                document = {**(document.get("metadata") or {}), "text": document.get("text")}
            yield location, document


def file_rows(file: str) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a JSONL, JSON or Parquet dataset file; `where` names file and line."""
    if file.endswith(".parquet"):
        return _parquet_rows(file)
    if file.endswith((".json", ".json.gz")):
        return _json_rows(file)
    return _jsonl_lines(file)


def dataset_files(path: str) -> list[str]:
    files = [f for f in expand_paths([path]) if f.endswith(DATA_SUFFIXES)]
    if not files:
        raise InputError(f"{path}: no dataset files (.jsonl, .json, .parquet) and not a documents artifact")
    return files


def dataset_ref(path: str | Path, stage: str) -> InputRef:
    """The dataset's lineage entry (content fingerprint), without reading its records."""
    path = str(path)
    if (Path(path) / MANIFEST).is_file():
        return open_artifact(path, stage, ["documents"]).ref()
    return raw_input(path, dataset_files(path))


def read_records(path: str | Path, stage: str, validate: Validator) -> Records:
    """Read a JSONL / Parquet file (or a folder or glob of them) or a documents artifact, checking every record.

    The first bad record stops everything with `file:line: what is wrong` (exit 2). One dataset holds one shape.
    """
    path = str(path)
    if (Path(path) / MANIFEST).is_file():
        rows = _documents_rows(open_artifact(path, stage, ["documents"]))
    else:
        files = dataset_files(path)
        rows = (row for file in files for row in file_rows(file))
    items, locations, shape, first_location = [], [], None, None
    for location, record in rows:
        if not isinstance(record, dict):
            raise InputError(f"{location}: a record must be a JSON object, got {type(record).__name__}")
        try:
            record_shape, normalised = validate(record)
        except ValueError as exc:
            raise InputError(f"{location}: {exc}") from None
        if shape is None:
            shape, first_location = record_shape, location
        elif record_shape != shape:
            raise InputError(f"{location}: a {record_shape!r} record in a dataset of {shape!r} records (from "
                             f"{first_location}); one dataset holds one shape")  # fmt: skip
        items.append(normalised)
        locations.append(location)
    if not items:
        raise InputError(f"{path}: holds no records; there is nothing to {stage}")
    return Records(items=items, shape=shape, locations=locations)


ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: Any, field_name: str = "messages", need_assistant: bool = True) -> list[dict]:
    """A chat: a non-empty list of {role, content} turns; assistant turns may carry tool_calls instead."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{field_name}' must be a non-empty list of {{role, content}} messages")
    cleaned = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{field_name}[{index}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{field_name}[{index}].role is {role!r}; expected one of {', '.join(ROLES)}")
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        if role == "assistant" and tool_calls is not None:
            if not isinstance(tool_calls, list) or not all(
                isinstance(c, dict) and isinstance((c.get("function") or c).get("name"), str)
                for c in tool_calls
            ):
                raise ValueError(
                    f"{field_name}[{index}].tool_calls must be a list of {{name, arguments}} calls"
                )
            if content is not None and not isinstance(content, str):
                raise ValueError(f"{field_name}[{index}].content must be a string")
        elif not isinstance(content, str):
            raise ValueError(f"{field_name}[{index}] ({role}) needs a string 'content'")
        turn = {"role": role, "content": content if content is not None else ""}
        if tool_calls is not None:
            turn["tool_calls"] = tool_calls
        cleaned.append(turn)
    if need_assistant and not any(
        m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in cleaned
    ):
        raise ValueError(f"'{field_name}' has no assistant turn with content: nothing to train on")
    return cleaned


def check_text(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{field_name}' must be a non-empty string")
    return value


def check_prompt(value: Any, field_name: str = "prompt") -> str | list[dict]:
    """A prompt: a string, or chat messages that end before the assistant's answer."""
    if isinstance(value, list):
        messages = check_messages(value, field_name, need_assistant=False)
        if messages[-1]["role"] == "assistant":
            raise ValueError(
                f"'{field_name}' ends with an assistant turn; the answer belongs in the completion"
            )
        return messages
    return check_text(value, field_name)


def check_answer(value: Any, field_name: str, conversational: bool) -> str | list[dict]:
    """A completion (or chosen/rejected answer): matches the prompt's form, string or assistant messages."""
    if conversational:
        if isinstance(value, str):  # a plain answer to a chat prompt is the assistant's turn
            value = [{"role": "assistant", "content": value}]
        messages = check_messages(value, field_name, need_assistant=False)
        if any(m["role"] != "assistant" for m in messages):
            raise ValueError(f"'{field_name}' may only hold assistant turns (the prompt holds the rest)")
        return check_messages(messages, field_name)
    if isinstance(value, list):
        raise ValueError(
            f"'{field_name}' is a message list but the prompt is a string; use one form for both"
        )
    return check_text(value, field_name)


def check_assistant_masks(records: Records, tokenizer, max_length: int) -> None:
    """Every chat record must leave assistant tokens to train on within max_length (the loss mask is not empty)."""
    template = tokenizer.chat_template or ""
    if "{% generation %}" not in template.replace("{%- generation %}", "{% generation %}"):
        raise InputError("the model's chat template has no {% generation %} markers, so assistant-only loss cannot "
                         "find the assistant's tokens; use a tokenizer made by `llmforge tokenize train` or add "
                         "the markers to chat_template.jinja")  # fmt: skip
    for record, location in zip(records.items, records.locations, strict=True):
        messages = record.get("messages") or (record["prompt"] + record["completion"])
        rendered = tokenizer.apply_chat_template(
            messages, tools=_tools(record), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        mask = rendered["assistant_masks"][:max_length]
        if not any(mask):
            reason = ("the assistant's turns start after max_length "
                      f"({max_length} tokens)") if any(rendered["assistant_masks"]) else "no assistant tokens"  # fmt: skip
            raise InputError(
                f"{location}: the loss mask is empty ({reason}); nothing of this record is trained on"
            )


def _tools(record: dict) -> list | None:
    tools = record.get("tools")
    return json.loads(tools) if isinstance(tools, str) else tools


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
    ]  # (config, model, tokenizer, dataset, peft_config, args, callbacks, shape)
    summarize: Callable[[list[dict]], dict[str, Any]]
    default_rates: tuple[float, float]  # learning rate: full fine-tuning, LoRA
    check: Callable[[Records, Any, PostTrainConfig], None] | None = None  # extra checks needing the tokenizer
    describe: Callable[[PostTrainConfig], list[tuple[str, str]]] | None = None  # the stage's rows in the plan


@dataclass
class Job:
    """Everything a worker needs; written to OUT.partial/logs/job.json."""

    stage: str
    module: str
    config: dict[str, Any]
    model: str
    data: str
    work: str
    shape: str


def open_model(path: str | Path, stage: str):
    """The model to train: a model or adapter artifact or a Hugging Face directory (hub ids with --online)."""
    from llmforge.model.loading import resolve_model

    source = resolve_model(path, stage)
    if source.kind == "quantized-model":
        raise InputError(f"{stage} trains a model or adapter; {path} is a quantized-model artifact (made by "
                         "`llmforge quantize`): train its source model instead, or use --qlora on it")  # fmt: skip
    if source.is_adapter and source.base is not None:
        ours, base = source.tokenizer_fingerprint, source.base.tokenizer_fingerprint
        if ours and base and ours != base:
            raise InputError(
                f"{path}: the adapter's tokenizer differs from its base model's ({source.base.path})"
            )
    return source


def run_posttrain(stage: Stage, config: PostTrainConfig, model: str | Path, data: str | Path, out: str | Path,
                  force: bool = False, callbacks: list | None = None, dry_run: bool = False) -> Path | None:  # fmt: skip
    """Validate, train, write the artifact. `callbacks` are extra TrainerCallbacks (in-process runs only).
    `dry_run` validates everything and prints the plan, then stops (nothing loaded or written; returns None)."""
    from llmforge.model.loading import load_tokenizer

    config = resolve_learning_rate(config, *stage.default_rates)
    source = open_model(model, stage.name)
    kind = output_kind(config)
    inputs = [source.ref(), dataset_ref(data, stage.name)]
    if not dry_run and up_to_date(out, stage.name, config, inputs):  # nothing to validate or load
        return run_stage(stage.name, kind, config, inputs, out, lambda ctx: None, force=force)
    # stdout carries only the output path: libraries that print or log to stdout (DeepSpeed's logger, TRL) are
    # sent to stderr while they run; run_stage prints the path after the body.
    with contextlib.redirect_stdout(sys.stderr):
        if config.lora.qlora and (reason := qlora_unavailable()):
            raise InputError(reason)
        if config.lora.merge and source.is_adapter and not config.lora.enabled:
            raise InputError("--merge merges the adapter this stage trains; it needs --lora")
        if callbacks and uses_launcher(config):
            raise InputError(
                "extra callbacks run in-process only; they cannot be combined with --nproc or --zero"
            )
        if config.zero is not None:
            from llmforge.train.deepspeed import deepspeed_config

            deepspeed_config(config.zero, config.offload)  # refuses impossible combinations before any work
        records = read_records(data, stage.name, stage.validate(config))
        tokenizer = load_tokenizer(source)
        if stage.check is not None:
            stage.check(records, tokenizer, config)
        log(f"{stage.name}: {len(records.items):,} {records.shape} records from {data}; "
            f"{describe_method(config, source)}")  # fmt: skip
        if dry_run:
            print_plan(stage, config, source, records, kind)
            return None

        def body(ctx) -> None:
            with contextlib.redirect_stdout(sys.stderr):
                train_and_write(ctx)

        def train_and_write(ctx) -> None:
            logs = ctx.work / LOGS
            logs.mkdir(exist_ok=True)
            discard_unfinished_checkpoints(ctx.work / CHECKPOINTS)
            write_jsonl(logs / "dataset.jsonl", records.items)
            job = Job(stage=stage.name, module=stage.module, config=config.model_dump(mode="json"), model=str(source.path),
                      data=str(logs / "dataset.jsonl"), work=str(ctx.work), shape=records.shape)  # fmt: skip
            (logs / "job.json").write_text(json.dumps(asdict(job), indent=2))
            if uses_launcher(config):
                launch_workers(logs / "job.json", config)
            else:
                train_job(job, callbacks=callbacks)
            result = json.loads((logs / "result.json").read_text())
            write_payload(ctx, source, config, kind)
            history = result.pop("log_history")
            ctx.stats.update({"records": len(records.items), "shape": records.shape, **result,
                              **stage.summarize(history)})  # fmt: skip

    return run_stage(stage.name, kind, config, inputs, out, body, force=force)


def safetensors_shapes(directory: str | Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the headers of a directory's *.safetensors files (no weights are read)."""
    import struct

    shapes = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        shapes.update({name: info["shape"] for name, info in header.items() if name != "__metadata__"})
    return shapes


def lora_parameters(shapes: dict[str, list[int]], rank: int, targets: str | list[str]) -> int:
    """Parameters LoRA adds: rank x (in + out) per targeted linear layer; all-linear is every 2-D weight of
    the decoder layers (peft leaves the output head alone)."""
    total = 0
    for name, shape in shapes.items():
        if len(shape) != 2 or not name.endswith(".weight") or ".layers." not in name:
            continue
        module = name.removesuffix(".weight").rsplit(".", 1)[-1]
        if targets == "all-linear" or module in targets:
            total += rank * (shape[0] + shape[1])
    return total


def print_plan(stage: Stage, config: PostTrainConfig, source, records: Records, kind: str) -> None:
    """What `--dry-run` prints: the model, the method, the data, the steps, the batch and where it runs."""
    import math

    from rich.table import Table

    from llmforge.console import console
    from llmforge.model.estimate import human_count

    base = source.base if source.is_adapter else source
    shapes = safetensors_shapes(base.path) if base.kind != "hub" else {}
    parameters = sum(math.prod(shape) for shape in shapes.values())
    architecture = "?"
    if base.kind != "hub" and (Path(base.path) / "config.json").is_file():
        architecture = ",".join(
            json.loads((Path(base.path) / "config.json").read_text()).get("architectures") or ["?"]
        )
    table = Table(title=f"{stage.name} plan", show_header=False, title_justify="left")
    table.add_column(style="cyan")
    table.add_column()
    table.add_row("model", f"{source.path} ({source.kind}{', base ' + base.path if source.is_adapter else ''}): "
                  f"{architecture}, {human_count(parameters) if parameters else '?'} parameters")  # fmt: skip
    method = describe_method(config, source)
    if config.lora.enabled and not source.is_adapter and shapes:
        added = lora_parameters(shapes, config.lora.rank, config.lora.target_modules)
        method += f"; about {human_count(added)} trainable ({100 * added / max(parameters, 1):.2g}%)"
    elif config.lora.enabled and source.is_adapter:
        added = sum(math.prod(shape) for shape in safetensors_shapes(source.path).values())
        method += f"; {human_count(added)} trainable" if added else ""
    table.add_row("method", method + (", 4-bit NF4 base" if config.lora.qlora else ""))
    table.add_row("output", {"adapter": "an adapter artifact (peft directory on the base)",
                             "model": "a merged full model" if config.lora.merge else "a full model"}[kind])  # fmt: skip
    table.add_row("data", f"{len(records.items):,} {records.shape} records")
    # the per-device batch counts sequences; GRPO's counts completions, num_generations of them per prompt
    samples = len(records.items) * getattr(config, "num_generations", 1)
    per_step = config.batch_size * config.gradient_accumulation * config.nproc
    steps = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * samples / per_step)
    table.add_row("batch", f"{per_step} = {config.batch_size} per device x accumulation "
                  f"{config.gradient_accumulation} x {config.nproc} processes, max_length {config.max_length}")  # fmt: skip
    table.add_row("steps", f"{steps:,}" + (" (max_steps)" if config.max_steps > 0 else f" ({config.epochs:g} epoch{'' if config.epochs == 1 else 's'})")
                  + f", lr {config.learning_rate:g} ({config.lr_scheduler}, warmup {config.warmup_ratio:g})")  # fmt: skip
    gpus = machine.gpu_count()
    precision = "bf16" if machine.bf16_supported() else "fp32"
    where = f"{gpus} GPU(s) visible" if gpus else "CPU (no GPU visible here)"
    engine = (f"DeepSpeed ZeRO-{config.zero}" + (" + CPU offload" if config.offload == "cpu" else "")
              if config.zero is not None else "no DeepSpeed")  # fmt: skip
    launch = f"{config.nproc} processes under torchrun" if uses_launcher(config) else "in this process"
    table.add_row("runs", f"{precision}, {engine}, {launch}; {where}")
    for name, value in stage.describe(config) if stage.describe else []:
        table.add_row(name, value)
    console.print(table)


def up_to_date(out: str | Path, stage: str, config: PostTrainConfig, inputs: list[InputRef]) -> bool:
    from llmforge.artifacts import fingerprint_of, holds

    return holds(out, fingerprint_of(stage, config, inputs))


def describe_method(config: PostTrainConfig, source) -> str:
    if not config.lora.enabled:
        return "full fine-tuning" + (" of the adapter merged into its base" if source.is_adapter else "")
    method = "QLoRA" if config.lora.qlora else "LoRA"
    if source.is_adapter:
        return f"{method}: continuing the input adapter on its base"
    return f"{method} rank {config.lora.rank}, alpha {config.lora.alpha}, dropout {config.lora.dropout}"


def launch_workers(job_path: Path, config: PostTrainConfig) -> None:
    """torchrun with one worker per process on this node; gloo on CPU (DeepSpeed's CPU accelerator)."""
    env = dict(os.environ)
    if not machine.has_cuda():
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", str(max(1, machine.cpu_count() // config.nproc)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={config.nproc}",
               "-m", "llmforge.train.posttrain", str(job_path)]  # fmt: skip
    log(f"launching {config.nproc} training process(es)" + (f" with DeepSpeed ZeRO-{config.zero}"
        + (" + CPU offload" if config.offload == "cpu" else "") if config.zero is not None else ""))  # fmt: skip
    completed = subprocess.run(command, env=env, stdout=sys.stderr.fileno())  # workers log to stderr too
    if completed.returncode != 0:
        raise LLMForgeError(f"training workers failed (exit {completed.returncode}, see the log above); "
                            "re-run the same command to resume from the last checkpoint")  # fmt: skip


def write_payload(ctx, source, config: PostTrainConfig, kind: str) -> None:
    """checkpoints/final -> the artifact root: a model directory, an adapter directory or a merged model."""
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
    base = source.base if source.is_adapter else source
    if kind == "adapter" or config.lora.merge:
        for name in ADAPTER_FILES:  # only the trained adapter ("default"), not TRL's frozen reference copy
            if (final / name).is_file():
                shutil.copy2(final / name, ctx.work / name)
        _point_adapter_at(ctx.work / "adapter_config.json", base)
        if config.lora.merge:
            adapter = ModelSource(path=str(ctx.work), kind="hf-dir", fingerprint="", base=base)
            merged = load_model(adapter, dtype="auto", merge=True)
            for name in (*ADAPTER_FILES, "README.md"):
                (ctx.work / name).unlink(missing_ok=True)
            save_model_payload(merged, tokenizer, ctx.work)
        else:
            tokenizer.save_pretrained(ctx.work)
            ctx.extra["base_model"] = base_model_entry(base, ctx.out)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(final, dtype="auto")
        save_model_payload(model, tokenizer, ctx.work)
    shutil.rmtree(final, ignore_errors=True)
    ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)
    expected = source.tokenizer_fingerprint
    if expected and expected != ctx.extra["tokenizer_fingerprint"]:
        warn("the tokenizer written differs from the input model's (fingerprint changed on save)")


def _point_adapter_at(adapter_config: Path, base) -> None:
    """peft records the directory the base was loaded from; make it the base model's own path (absolute)."""
    settings = json.loads(adapter_config.read_text())
    settings["base_model_name_or_path"] = str(Path(base.path).resolve()) if base.kind != "hub" else base.path
    adapter_config.write_text(json.dumps(settings, indent=2))


# ---------------------------------------------------------------------------------------------------------------
# Training (in process, or in each worker under torchrun)


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
        use_cpu=cpu,
        bf16=machine.bf16_supported(),  # TRL defaults to bf16, which a CPU run must not ask for
        gradient_checkpointing=config.gradient_checkpointing,
        dataloader_num_workers=0,
    )
    if cpu and config.zero is None and config.nproc > 1:
        arguments["ddp_backend"] = "gloo"
    if config.zero is not None:
        from llmforge.train.deepspeed import deepspeed_config

        arguments["deepspeed"] = deepspeed_config(config.zero, config.offload)
    return arguments


def lora_config(config: PostTrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=config.lora.target_modules, task_type="CAUSAL_LM", bias="none")  # fmt: skip


def load_policy(source, config: PostTrainConfig):
    """(model, peft_config): what the trainer gets for this source and these settings."""
    from llmforge.model.loading import load_model

    if config.lora.qlora:
        return _load_4bit(source, config)
    if source.is_adapter:
        if config.lora.enabled:  # continue training the adapter itself
            return load_model(source, trainable_adapter=True), None
        return load_model(source, merge=True).requires_grad_(True), None  # peft left the base weights frozen
    return load_model(source), (lora_config(config) if config.lora.enabled else None)


def _load_4bit(source, config: PostTrainConfig):
    import torch
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    base = source.base if source.is_adapter else source
    model = AutoModelForCausalLM.from_pretrained(
        base.path, quantization_config=quantization, dtype=torch.bfloat16
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if source.is_adapter:
        return PeftModel.from_pretrained(model, source.path, is_trainable=True), None
    return model, lora_config(config)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) of the policy. ZeRO-3 partitions parameters (their full size is then in ds_numel);
    the frozen copy TRL keeps of a continued adapter (adapter "ref") is the reference, not the policy."""
    trainable = total = 0
    for name, parameter in model.named_parameters():
        if ".ref." in name:
            continue
        count = getattr(parameter, "ds_numel", parameter.numel())
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total


def _checkpoint_dirs(checkpoints: Path) -> list[tuple[int, Path]]:
    """The Trainer's checkpoint-N directories, by step."""
    found = []
    for path in checkpoints.glob("checkpoint-*") if checkpoints.is_dir() else []:
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and path.is_dir():
            found.append((int(step), path))
    return sorted(found)


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: without a readable one, the checkpoint was cut short."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def last_checkpoint(checkpoints: Path) -> tuple[str | None, int]:
    """(path, step) of the newest complete checkpoint, or (None, 0). transformers' get_last_checkpoint takes the
    newest directory even when a kill cut its writing short, and resuming from it then fails for good."""
    complete = [(step, path) for step, path in _checkpoint_dirs(checkpoints) if _complete(path)]
    return (str(complete[-1][1]), complete[-1][0]) if complete else (None, 0)


def discard_unfinished_checkpoints(checkpoints: Path) -> None:
    """Remove checkpoints a kill interrupted mid-write (user process, before any worker starts)."""
    for _, path in _checkpoint_dirs(checkpoints):
        if not _complete(path):
            log(f"discarding {path.name}: the run was interrupted while writing it")
            shutil.rmtree(path, ignore_errors=True)


PLAIN_TYPES = {str: "string", bool: "bool", int: "int64", float: "float64"}


def to_dataset(rows: list[dict]):
    """The validated records as a datasets.Dataset, each exactly as written. Left to itself, Arrow takes the columns
    from the first record (a `schema` or `tools` field only later records have would vanish), merges the structs of
    differing records (tool-call arguments would gain other calls' keys as nulls) and refuses mixed types (`tests`
    as a string here and a list there). So every column any record has is kept (None where a record lacks it), and a
    column holding anything but one plain type is stored as JSON, which hands every value back as it was."""
    import datasets

    columns = list(dict.fromkeys(key for row in rows for key in row))
    rows = [{column: row.get(column) for column in columns} for row in rows]
    features = {}
    for column in columns:
        kinds = {type(row[column]) for row in rows if row[column] is not None}
        plain = PLAIN_TYPES.get(next(iter(kinds))) if len(kinds) == 1 else None
        features[column] = datasets.Value(plain) if plain else datasets.Json()
    return datasets.Dataset.from_list(rows, features=datasets.Features(features))


def train_job(job: Job, callbacks: list | None = None) -> None:
    """Build the stage's TRL trainer, train (resuming from the last checkpoint), save checkpoints/final."""
    import importlib

    import datasets
    import transformers
    from transformers.trainer_callback import PrinterCallback

    from llmforge.model.loading import load_tokenizer

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
    model, peft_config = load_policy(source, config)
    dataset = to_dataset(read_jsonl(job.data))
    checkpoints = work / CHECKPOINTS
    last, resumed_step = last_checkpoint(checkpoints)
    display = LiveMetrics(work / METRICS, stage.name, resumed_step)
    trainer = stage.make_trainer(config=config, model=model, tokenizer=tokenizer, dataset=dataset,
                                 peft_config=peft_config, arguments=arguments,
                                 callbacks=[display, *(callbacks or [])], shape=job.shape)  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout, which carries only the output path
    trainable, total = parameter_counts(trainer.model)
    if trainer.is_world_process_zero():
        log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3g}%)")
        if last:
            log(f"[cyan]resuming[/] from {Path(last).name} (step {resumed_step})")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(checkpoints / FINAL))
    if trainer.is_world_process_zero():
        result = {"trainable_parameters": trainable, "total_parameters": total,
                  "trainable_share": round(trainable / total, 6), "steps": trainer.state.global_step,
                  "resumed_from_step": resumed_step, "train_seconds": round(time.perf_counter() - started, 3),
                  "log_history": trainer.state.log_history}  # fmt: skip
        write_json(work / LOGS / "result.json", result, default=float)


# ---------------------------------------------------------------------------------------------------------------
# Metrics: OUT/metrics.jsonl and a live display


def _live_metrics_class():
    from transformers import TrainerCallback

    class _LiveMetrics(TrainerCallback):
        """Appends every log to OUT/metrics.jsonl and shows a progress bar with the latest figures (rank 0)."""

        HEADLINE = ("loss", "reward", "rewards/accuracies", "rewards/margins", "kl", "learning_rate")

        def __init__(self, path: Path, stage: str, resumed_step: int) -> None:
            self.path, self.stage, self.resumed_step = path, stage, resumed_step
            self.progress = self.task = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            if (
                self.path.is_file()
            ):  # a resumed run: forget what was logged after the checkpoint it restarts from
                kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= self.resumed_step]
                write_jsonl(self.path, kept)
            from llmforge.console import progress

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
                self.progress.stop()
                self.progress = None

    return _LiveMetrics


def LiveMetrics(path: Path, stage: str, resumed_step: int):  # noqa: N802 (a class built on first use)
    return _live_metrics_class()(path, stage, resumed_step)


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


if __name__ == "__main__":
    job_file = Path(sys.argv[1])
    train_job(Job(**json.loads(job_file.read_text())))
