"""What `llmforge sft|dpo|grpo --dry-run` prints once every record is checked: the model, the method, the data, the
steps, the batch and where it runs. Nothing is loaded: parameter counts come from the safetensors headers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmforge import machine
from llmforge.data.records import Records
from llmforge.train.posttrain import PostTrainConfig, Stage, describe_method


def weight_shapes(directory: str | Path) -> dict[str, list[int]]:
    """Tensor name -> shape of every weight in a directory's *.safetensors files (read from their headers)."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(file, framework="numpy") as weights:
            shapes.update({name: weights.get_slice(name).get_shape() for name in weights.keys()})
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
    from rich.table import Table

    from llmforge.console import console
    from llmforge.model.estimate import human_count

    base = source.base if source.is_adapter else source
    shapes = weight_shapes(base.path) if base.kind != "hub" else {}
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
        added = sum(math.prod(shape) for shape in weight_shapes(source.path).values())
        method += f"; {human_count(added)} trainable" if added else ""
    table.add_row("method", method + (", 4-bit NF4 base" if config.lora.qlora else ""))
    table.add_row("output", {"adapter": "an adapter artifact (peft directory on the base)",
                             "model": "a merged full model" if config.lora.merge else "a full model"}[kind])  # fmt: skip
    table.add_row("data", f"{len(records.items):,} {records.shape} records")
    # the per-device batch counts sequences; GRPO's counts completions, num_generations of them per prompt
    samples = len(records.items) * getattr(config, "num_generations", 1)
    processes = config.world_size()
    per_step = config.batch_size * config.gradient_accumulation * processes
    steps = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * samples / per_step)
    table.add_row("batch", f"{per_step} = {config.batch_size} per device x accumulation "
                  f"{config.gradient_accumulation} x {processes} processes, max_length {config.max_length}")  # fmt: skip
    table.add_row("steps", f"{steps:,}" + (" (max_steps)" if config.max_steps > 0 else f" ({config.epochs:g} epoch{'' if config.epochs == 1 else 's'})")
                  + f", lr {config.learning_rate:g} ({config.lr_scheduler}, warmup {config.warmup_ratio:g})")  # fmt: skip
    gpus = machine.gpu_count()
    precision = "bf16" if machine.bf16_supported() else "fp32"
    where = f"{gpus} GPU(s) visible" if gpus else "CPU (no GPU visible here)"
    engine = (f"DeepSpeed ZeRO-{config.zero}" + (" + CPU offload" if config.offload == "cpu" else "")
              if config.zero is not None else "no DeepSpeed")  # fmt: skip
    if config.hostfile is not None:
        launch = f"{processes} processes from {config.hostfile} under the deepspeed launcher"
    else:
        launch = f"{processes} processes under torchrun" if config.uses_launcher() else "in this process"
    table.add_row("runs", f"{precision}, {engine}, {launch}; {where}")
    for name, value in stage.describe(config) if stage.describe else []:
        table.add_row(name, value)
    console.print(table)
