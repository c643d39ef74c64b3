"""What `llmforge sft|dpo|grpo --dry-run` prints once every record is checked: the model, the method, the data, the
steps, the batch, where it runs, the base's precision and the memory per process. Nothing is loaded: parameter
counts, dtypes and the memory estimate come from the safetensors headers and config.json, and a LoRA run's
trainable count from peft on the model's weightless skeleton."""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmforge import machine
from llmforge.data.records import Records
from llmforge.train.posttrain import PostTrainConfig, Stage, describe_method, qlora_precision

# bytes a value, by safetensors dtype
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1}
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16"}
# NF4 with double quantization: 4 bits a value, an 8-bit absmax per block of 64 values, a float32 scale per 256 blocks
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
ADAPTER_BYTES = 16  # a LoRA parameter trains in float32: weight, gradient and two Adam states


def weight_header(directory: str | Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) of every weight in a directory's *.safetensors files (read from their headers)."""
    from safetensors import safe_open

    found = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(file, framework="numpy") as weights:
            for name in weights.keys():
                tensor = weights.get_slice(name)
                found[name] = (tensor.get_shape(), tensor.get_dtype())
    return found


def weight_shapes(directory: str | Path) -> dict[str, list[int]]:
    """Tensor name -> shape of every weight in a directory's *.safetensors files."""
    return {name: shape for name, (shape, _) in weight_header(directory).items()}


def quantized_in_4bit(name: str, shape: list[int]) -> bool:
    """A checkpoint weight bitsandbytes holds in 4 bits: a linear layer's inside the decoder layers (not the output
    head). A mixture of experts stores its experts as matrices too, but transformers 5 loads them fused into 3-D
    tensors, which are no linear layers: bitsandbytes leaves them in their dtype (checked on a Qwen3-MoE)."""
    return len(shape) == 2 and name.endswith(".weight") and ".layers." in name and ".experts." not in name


def lora_parameters(base, config: PostTrainConfig, score_head: bool = False) -> int:
    """Parameters the LoRA run trains on `base` (with `score_head`, the new head too), counted by peft itself on
    the model's skeleton: built on the meta device from its config, so no weight is read or allocated. Every
    architecture counts as it will train: a mixture of experts' experts are fused 3-D tensors in transformers 5,
    which peft adapts differently from the per-expert matrices its checkpoint stores."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from llmforge.train.trl_job import lora_config

    hf_config = AutoConfig.from_pretrained(base.path)
    if score_head:
        hf_config.num_labels = 1
    model_class = AutoModelForSequenceClassification if score_head else AutoModelForCausalLM
    with torch.device("meta"):
        model = model_class.from_config(hf_config)
    adapted = get_peft_model(model, lora_config(config, score_head))
    return sum(parameter.numel() for parameter in adapted.parameters() if parameter.requires_grad)


def stored_dtype(header: dict[str, tuple[list[int], str]]) -> str:
    """The dtype most of the weights are stored in (by values)."""
    by_dtype: dict[str, int] = {}
    for shape, dtype in header.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + math.prod(shape)
    dtype = max(by_dtype, key=by_dtype.get) if by_dtype else "F32"
    return DTYPE_NAMES.get(dtype, dtype)


def training_memory(config: PostTrainConfig, header: dict[str, tuple[list[int], str]], trained: int,
                    base: str | Path) -> dict[str, float]:  # fmt: skip
    """Bytes per process: the frozen base, what trains (weights, gradients, Adam states) and the activations of
    one micro-batch. Full fine-tuning keeps weights, gradients and both Adam states in the stored dtype (DeepSpeed:
    its mixed-precision layout, sharded by ZeRO); LoRA adds float32 adapters on the frozen base as stored; QLoRA
    holds the decoder's linear layers in NF4 and peft upcasts the rest of the base to float32."""
    from llmforge.model import estimate
    from llmforge.model.estimate import ModelShape

    stored = sum(math.prod(shape) * DTYPE_BYTES.get(dtype, 4) for shape, dtype in header.values())
    parameters = sum(math.prod(shape) for shape, _ in header.values())
    if not config.lora.enabled:
        if config.zero is not None:
            precision = "bf16" if machine.bf16_supported() else "fp32"
            state = estimate.training_memory(parameters, config.zero, config.world_size(), precision)["total"]
        else:
            state = 4 * stored  # weights, gradients and two Adam states, all in the stored dtype
        memory = {"frozen": 0.0, "trained": state}
    else:
        if config.lora.qlora:
            frozen = sum(math.prod(shape) * (NF4_BYTES if quantized_in_4bit(name, shape) else 4)
                         for name, (shape, _) in header.items())  # fmt: skip
        else:
            frozen = stored / (config.world_size() if config.zero == 3 else 1)
        memory = {"frozen": frozen, "trained": trained * ADAPTER_BYTES}
    activations = ModelShape.from_directory(base).activation_bytes(
        config.max_length, config.batch_size, config.gradient_checkpointing
    )
    memory["activations"] = activations * (1 if machine.bf16_supported() else 2)  # float32 on CPU
    return memory


def describe_base(config: PostTrainConfig, dtype: str) -> str:
    if config.lora.qlora:
        return qlora_precision() + ", frozen"
    return f"{dtype} as stored, " + ("frozen" if config.lora.enabled else "every weight trained")


def print_plan(stage: Stage, config: PostTrainConfig, source, records: Records, kind: str,
               evaluated: Records | None = None) -> None:  # fmt: skip
    from rich.table import Table

    from llmforge.console import console
    from llmforge.model.estimate import human_bytes, human_count

    base = source.base if source.is_adapter else source
    header = weight_header(base.path) if base.kind != "hub" else {}
    shapes = {name: shape for name, (shape, _) in header.items()}
    parameters = sum(math.prod(shape) for shape in shapes.values())
    dtype = stored_dtype(header)
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
    method = describe_method(config, source, stage)
    added = parameters
    if config.lora.enabled and (stage.score_head or not source.is_adapter) and shapes:
        added = lora_parameters(base, config, bool(stage.score_head))
        method += f"; {human_count(added)} trainable ({100 * added / max(parameters, 1):.2g}%)"
    elif config.lora.enabled and source.is_adapter and not stage.score_head:
        added = sum(math.prod(shape) for shape in weight_shapes(source.path).values())
        method += f"; {human_count(added)} trainable" if added else ""
    table.add_row("method", method)
    table.add_row("base", describe_base(config, dtype))
    merged = "a merged full model" + (f" (the adapter merged into the base reloaded un-quantized, {dtype})"
                                      if config.lora.qlora else "")  # fmt: skip
    reward = "a reward model (the decoder and its score head" + (", the adapter merged)" if config.lora.enabled
                                                                 else ")")  # fmt: skip
    table.add_row("output", {"adapter": "an adapter artifact (peft directory on the base)", "reward-model": reward,
                             "model": merged if config.lora.merge else "a full model"}[kind])  # fmt: skip
    table.add_row("data", f"{len(records.items):,} {records.shape} records")
    if evaluated is not None:
        origin = config.eval_data or f"{config.eval_fraction:g} of the data, chosen by seed {config.seed}"
        table.add_row("held out", f"{len(evaluated.items):,} records ({origin}), measured every "
                                  f"{config.eval_steps or config.save_steps} steps and at the end")  # fmt: skip
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
    if header:
        memory = training_memory(config, header, added, base.path)
        frozen = f"frozen base {human_bytes(memory['frozen'])} + " if memory["frozen"] else ""
        table.add_row("memory", f"about {human_bytes(memory['frozen'] + memory['trained'])} per process ({frozen}"
                      f"trained weights, gradients and Adam states {human_bytes(memory['trained'])}) + "
                      f"~{human_bytes(memory['activations'])} activations per micro-batch")  # fmt: skip
    for name, value in stage.describe(config) if stage.describe else []:
        table.add_row(name, value)
    console.print(table)
