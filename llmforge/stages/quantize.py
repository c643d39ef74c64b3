"""Quantize a model (LoRA adapters are merged first) and report what it cost: size and held-out perplexity.

Methods: `w8a16` and `w4a16` (weight-only INT8 / INT4 in groups of input columns, GPTQ calibrated on `--data`, AWQ
with `--algorithm awq` (scales that protect the channels the calibration activations show matter, then round to
nearest), or round-to-nearest with `--algorithm rtn`; `--zero-point` for asymmetric groups; `--group-size auto`
takes the largest of 128/64/32 that divides every quantized layer's input width, else one scale per output
channel) and `w8a8` (INT8 weights and dynamic per-token INT8 activations), written by llm-compressor as compressed-tensors checkpoints, the format vLLM serves;
`torchao-int8` (weight-only) and `torchao-int8-dynamic` (dynamic activations), torchao checkpoints that
transformers, and so the embedded CPU server, run directly; `gguf-*` (f16, bf16, Q8_0 and the K-quants Q6_K,
Q5_K_M, Q4_K_M), GGUF files for llama.cpp, Ollama and LM Studio, written by llama.cpp's own converter and
quantizer and scored by llama.cpp (llmforge/model/gguf.py).
The output is a quantized-model artifact: a Hugging Face directory with the tokenizer and generation config; a
gguf artifact for the gguf methods: model.gguf, with the source's tokenizer files and generation config beside it
(what `serve` and `import` read).
`--data` (a tokens or documents artifact) gives the calibration text and the held-out text the perplexity is
measured on, before and after; a drift beyond the budget (1% for 8 bits and more, 5% below) is warned about and
recorded.
A documents artifact's text is tokenized as text: special-token strings in it are characters, not control tokens.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NotRequired, TypedDict

import typer
from pydantic import Field, field_validator

from llmforge.config import StageConfig
from llmforge.errors import InputError
from llmforge.model import gguf
from llmforge.options import Flag, stage_command

STAGE = "quantize"

Method = Literal["w8a16", "w4a16", "w8a8", "torchao-int8", "torchao-int8-dynamic", "gguf-f16", "gguf-bf16",
                 "gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m"]  # fmt: skip
LLM_COMPRESSOR_SCHEMES = {"w8a16": "W8A16", "w4a16": "W4A16", "w8a8": "W8A8"}
BITS = {"w8a16": 8, "w4a16": 4, "w8a8": 8, "torchao-int8": 8, "torchao-int8-dynamic": 8,
        **{method: kind.bits for method, kind in gguf.TYPES.items()}}  # fmt: skip
# `--group-size auto` tries these, largest first (128 is llm-compressor's preset; SmolLM2's 576 takes 64).
AUTO_GROUP_SIZES = (128, 64, 32)
GROUPED = ("w8a16", "w4a16")  # the methods with a group size; the others quantize per output channel
# Documents artifacts: every HELD_OUT_EVERY-th document is held out for perplexity, the rest calibrate.
HELD_OUT_EVERY = 10


class Config(StageConfig):
    method: Method = Field(
        "w4a16",
        description="w8a16 / w4a16 / w8a8: llm-compressor, compressed-tensors (vLLM); torchao-int8 / "
        "torchao-int8-dynamic: torchao, runs on CPU in transformers and the embedded server; gguf-f16 / gguf-bf16 "
        "/ gguf-q8_0 / gguf-q6_k / gguf-q5_k_m / gguf-q4_k_m: llama.cpp's GGUF (llama.cpp, Ollama, LM Studio)",
    )
    algorithm: Literal["gptq", "awq", "rtn"] = Field(
        "gptq",
        description="llm-compressor methods: gptq calibrates on --data; awq (w4a16 / w8a16) scales the weight "
        "channels that --data's activations show matter, then rounds to nearest; rtn rounds to nearest, no "
        "calibration (torchao methods always round to nearest; gguf methods are llama.cpp's own quantizer)",
    )
    group_size: int | Literal["auto", "channel"] = Field(
        "auto",
        description="w8a16 / w4a16: input columns sharing a scale; auto = the largest of 128/64/32 dividing every "
        "quantized layer's input width, else channel (one scale per output row)",
    )
    zero_point: bool = Field(
        False,
        description="w4a16 / w8a16: asymmetric quantization, a zero point beside each group's scale (what AWQ "
        "checkpoints usually use); off = symmetric, scales only",
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"], description="Modules kept in full precision (names or re:regex)"
    )
    calibration_samples: int = Field(
        512, gt=0, description="GPTQ / AWQ: calibration windows drawn from --data"
    )
    seq_len: int = Field(
        2048, gt=1, description="Tokens per calibration and perplexity window (capped at the model's context)"
    )
    eval_tokens: int = Field(
        65536, gt=1, description="Held-out tokens the perplexity before and after is measured on"
    )
    budget_pct: float | None = Field(
        None,
        gt=0,
        description="Accepted perplexity increase in percent; none = 1 for 8 bits and more, 5 below",
    )

    @field_validator("group_size")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("a group size is a positive number of input columns, auto or channel")
        return value


class Stats(TypedDict):
    """What quantize writes in its manifest's stats (read by `llmforge card`)."""

    method: str
    algorithm: str  # gptq, awq, rtn (round to nearest) or llama.cpp (its quantizer: gguf methods)
    group_size: int | str  # input columns per scale, or "channel" (one scale per output row); gguf: its block
    zero_point: NotRequired[bool]  # w4a16 / w8a16: asymmetric (a zero point per group) or symmetric
    calibration_windows: int
    bytes_before: int  # weight files of the (merged) input model
    bytes_after: int
    compression: float  # bytes_before / bytes_after
    eval_tokens: int  # held-out tokens the perplexities are measured on
    perplexity_before: float
    perplexity_after: float
    perplexity_delta_pct: float
    budget_pct: float
    within_budget: bool
    tensor_types: NotRequired[str]  # gguf: tensors per llama.cpp type ("Q5_0 166, F32 61, Q4_K 16, ...")


@dataclass
class Texts:
    """Token windows for calibration and for the held-out perplexity."""

    calibration: list[list[int]]
    held_out: list[list[int]]


def run(model: str | Path, data: str | Path, out: str | Path, config: Config | None = None,
        force: bool = False) -> Path:  # fmt: skip
    """Quantize `model` with calibration/evaluation text from `data`; returns the quantized-model artifact."""
    from llmforge.artifacts import open_artifact, run_stage
    from llmforge.model.loading import load_tokenizer, resolve_model

    config = config or Config()
    if config.method in gguf.TYPES:
        if "ignore" in config.model_fields_set:
            raise InputError(f"ignore: {config.method} leaves each tensor's type to llama.cpp's quantizer, which "
                             "keeps no module in full precision on request")  # fmt: skip
        gguf.check_tools(config.method)
    if config.algorithm == "awq" and config.method not in GROUPED:
        raise InputError(f"--algorithm awq: AWQ scales weights for weight-only quantization (w4a16, w8a16), not "
                         f"{config.method}")  # fmt: skip
    if config.zero_point and config.method not in GROUPED:
        why = ("is symmetric per channel" if config.method in LLM_COMPRESSOR_SCHEMES
               else "has no zero-point setting")  # fmt: skip
        raise InputError(f"--zero-point: zero points are for w4a16 and w8a16; {config.method} {why}")
    if config.method in LLM_COMPRESSOR_SCHEMES and importlib.util.find_spec("llmcompressor") is None:
        raise InputError(f"method {config.method} needs llm-compressor: pip install 'llmforge[quantize]' (in an "
                         "environment without vllm: they pin different compressed-tensors)")  # fmt: skip
    source = resolve_model(model, STAGE)
    if source.kind == "quantized-model":
        raise InputError(f"{model}: already quantized ({source.artifact.extra.get('method')}); quantize the "
                         "model it was made from")  # fmt: skip
    dataset = open_artifact(data, STAGE, ["tokens", "documents"])
    expected = source.tokenizer_fingerprint
    found = dataset.extra.get("tokenizer_fingerprint")
    if dataset.kind == "tokens" and expected and found != expected:
        raise InputError(f"{data}: encoded with another tokenizer than {model}'s (tokenizer fingerprint "
                         f"{str(found)[:12]} vs {expected[:12]}); encode the text with `--model {model}`")  # fmt: skip
    model_config = _model_config(source)
    group = choose_group_size(config, quantized_widths(model_config, config), model)
    if config.method in gguf.TYPES:
        from llmforge.model.loading import local_path, tokenizer_dir

        model_dir = Path(local_path(source.base if source.is_adapter else source))
        if model_dir.is_dir():  # a Hub id not downloaded yet is checked when converted
            gguf.check_vocabulary(model_dir, Path(tokenizer_dir(source)), model)
    tokenizer = load_tokenizer(source)
    texts = _texts(dataset, tokenizer, config, int(getattr(model_config, "max_position_embeddings", 2048)))
    vocab_size = getattr(model_config, "vocab_size", None)
    largest = max(max(window) for window in (*texts.held_out, *texts.calibration))
    if vocab_size and largest >= vocab_size:  # else an IndexError deep inside the embedding
        made_by = f"{data} was encoded" if dataset.kind == "tokens" else f"{model}'s tokenizer encodes {data}"
        raise InputError(f"{made_by} with token id {largest}, beyond the model's vocabulary of {vocab_size}: "
                         "the tokenizer is not this model's")  # fmt: skip
    inputs = [source.ref(), dataset.ref()]
    kind = "gguf" if config.method in gguf.TYPES else "quantized-model"
    return run_stage(STAGE, kind, config, inputs, out,
                     lambda ctx: _measure_and_quantize(ctx, source, texts, config, group), force=force)  # fmt: skip


def _model_config(source):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.base.path if source.is_adapter else source.path)


def quantized_widths(model_config, config: Config) -> dict[str, int]:
    """The input width of every Linear layer the method quantizes (those `ignore` does not keep), read from a
    weightless (meta device) copy of the model: no weights are loaded."""
    import torch
    from transformers import AutoModelForCausalLM

    if config.method not in GROUPED:
        return {}
    from compressed_tensors.utils import match_named_modules

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return {
        name: module.in_features for name, module in match_named_modules(model, ["Linear"], config.ignore)
    }


def choose_group_size(config: Config, widths: dict[str, int], model: str | Path) -> int | str:
    """The group size the method uses (an int) or "channel"; said on screen. An explicit size must divide every
    quantized layer's input width: llm-compressor would refuse the layers it does not divide, or pad them."""
    from llmforge.console import log

    asked = config.group_size
    if config.method in gguf.TYPES:
        if isinstance(asked, int):
            raise InputError(f"--group-size {asked}: {config.method} uses llama.cpp's fixed blocks "
                             f"({gguf.TYPES[config.method].block} weights per scale)")  # fmt: skip
        return gguf.TYPES[config.method].block
    if config.method not in GROUPED:
        if isinstance(asked, int):
            raise InputError(f"--group-size {asked}: {config.method} quantizes per output channel; group sizes are "
                             f"for {' / '.join(GROUPED)}")  # fmt: skip
        return "channel"
    if isinstance(asked, int):
        odd = {name: width for name, width in widths.items() if width % asked}
        if odd:
            name, width = next(iter(odd.items()))
            divisors = [size for size in AUTO_GROUP_SIZES if all(w % size == 0 for w in widths.values())]
            raise InputError(f"{model}: --group-size {asked} does not divide the input width of {len(odd)} "
                             f"quantized layer(s), {name} has {width} columns; use --group-size "
                             f"{divisors[0] if divisors else 'channel'} or auto")  # fmt: skip
        log(f"group size {asked} (as asked)")
        return asked
    if asked == "auto":
        for size in AUTO_GROUP_SIZES:
            if all(width % size == 0 for width in widths.values()):
                log(f"group size {size}: the largest of {'/'.join(map(str, AUTO_GROUP_SIZES))} that divides the "
                    f"input width of all {len(widths)} quantized layers")  # fmt: skip
                return size
        log(f"group size: channel (one scale per output row): none of {'/'.join(map(str, AUTO_GROUP_SIZES))} "
            f"divides the input width of all {len(widths)} quantized layers")  # fmt: skip
        return "channel"
    log("group size: channel (one scale per output row, as asked)")
    return "channel"


def _texts(dataset, tokenizer, config: Config, context: int) -> Texts:
    """Calibration windows from the training text, perplexity windows from held-out text, never overlapping."""
    from llmforge.model.perplexity import windows

    seq_len = min(config.seq_len, context)
    if dataset.kind == "tokens":
        from llmforge.data.shards import TokenShards

        shards = TokenShards(dataset.path)
        if not shards.num_tokens("val"):
            raise InputError(f"{dataset.path}: no held-out 'val' tokens to measure perplexity on; re-encode "
                             "with --val-fraction above 0, or pass a documents artifact")  # fmt: skip
        calibration_docs, held_out_docs = shards.documents("train"), shards.documents("val")
    else:
        from llmforge.data.documents import iter_texts

        def split(held_out: bool):
            for index, text in enumerate(iter_texts(dataset)):
                if (index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held_out:
                    # As `tokenize encode` reads documents by default: a page quoting `<|im_start|>` is text.
                    yield tokenizer(text, split_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]

        calibration_docs, held_out_docs = split(False), split(True)
    held_out = windows(held_out_docs, seq_len, config.eval_tokens)
    if not held_out:
        raise InputError(f"{dataset.path}: too little held-out text to measure perplexity on")
    calibration = []
    if config.method in LLM_COMPRESSOR_SCHEMES and config.algorithm != "rtn":
        calibration = windows(calibration_docs, seq_len, config.calibration_samples * seq_len)
        if not calibration:
            raise InputError(f"{dataset.path}: no calibration text outside the held-out part")
    return Texts(calibration=calibration, held_out=held_out)


def weights_bytes(directory: Path) -> int:
    return sum(
        f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in Path(directory).glob(pattern)
    )


def _measure_and_quantize(ctx, source, texts: Texts, config: Config, group: int | str) -> None:
    from transformers import AutoModelForCausalLM

    from llmforge.console import log, warn
    from llmforge.model.loading import (
        TOKENIZER_FILES,
        TOKENIZER_SIDE_FILES,
        base_model_entry,
        load_model,
        tokenizer_dir,
    )
    from llmforge.model.perplexity import perplexity

    log(f"loading {source.path}" + (" and merging the adapter into its base" if source.is_adapter else ""))
    model = load_model(source, merge=True).eval()
    unquantized_dir = Path(source.path)
    if source.is_adapter or source.kind == "hub":  # a directory of the merged weights, to measure and reload
        unquantized_dir = ctx.work / "checkpoints" / "merged"
        model.save_pretrained(unquantized_dir, safe_serialization=True)
    log(f"perplexity before, on {sum(len(w) for w in texts.held_out):,} held-out tokens")
    before = perplexity(model, texts.held_out)

    # copied, not re-saved, so the tokenizer fingerprint stays the same; a GGUF carries its vocabulary and chat
    # template inside, and these beside it are what `serve` and `import` read (as vLLM's GGUF loading takes
    # --tokenizer from the original model): transformers' rebuild from a GGUF loses added tokens such as <think>.
    # The side files are the whole tokenizer of a model without tokenizer.json (a SentencePiece tokenizer.model).
    for name in (*TOKENIZER_FILES, *TOKENIZER_SIDE_FILES):
        if (Path(tokenizer_dir(source)) / name).is_file():
            shutil.copy2(Path(tokenizer_dir(source)) / name, ctx.work / name)
    if config.method in gguf.TYPES:
        del model
        if (unquantized_dir / "generation_config.json").is_file():  # the sampling defaults and stop tokens
            shutil.copy2(unquantized_dir / "generation_config.json", ctx.work / "generation_config.json")
        after = _gguf(ctx, unquantized_dir, Path(tokenizer_dir(source)), texts, config.method)
        size_after = (ctx.work / gguf.FILE_NAME).stat().st_size
    else:
        if config.method in LLM_COMPRESSOR_SCHEMES:
            _llm_compressor(model, texts, config, group, ctx.work)
        else:
            del model
            _torchao(unquantized_dir, config.method, ctx.work)
        log("reloading the quantized checkpoint with transformers to measure it")
        quantized = AutoModelForCausalLM.from_pretrained(ctx.work).eval()
        after = perplexity(quantized, texts.held_out)
        size_after = weights_bytes(ctx.work)
    bits = BITS[config.method]
    # Perplexity drift the seeds accept: INT8 loses under 1%, INT4 1-5%.
    budget = config.budget_pct if config.budget_pct is not None else (1.0 if bits >= 8 else 5.0)
    delta = 100.0 * (after - before) / before
    size_before = weights_bytes(unquantized_dir)
    # the merged weights are as large as the model: not kept in the artifact
    if unquantized_dir != Path(source.path):
        shutil.rmtree(unquantized_dir)
    ctx.stats.update({
        "method": config.method,
        "algorithm": "llama.cpp" if config.method in gguf.TYPES else config.algorithm if texts.calibration else "rtn",
        "group_size": group,
        **({"zero_point": config.zero_point} if config.method in GROUPED else {}),
        "calibration_windows": len(texts.calibration),
        "bytes_before": size_before,
        "bytes_after": size_after,
        "compression": round(size_before / size_after, 3),
        "eval_tokens": sum(len(w) for w in texts.held_out),
        "perplexity_before": round(before, 4),
        "perplexity_after": round(after, 4),
        "perplexity_delta_pct": round(delta, 3),
        "budget_pct": budget,
        "within_budget": delta <= budget,
    })  # fmt: skip
    if delta > budget:
        warn(f"perplexity rose {delta:.2f}% ({before:.3f} -> {after:.3f}), beyond the {budget}% budget for "
             f"{bits}-bit; try {budget_hints(config, group)}")  # fmt: skip
    from llmforge.data.tokenizer import tokenizer_fingerprint

    if (ctx.work / "tokenizer.json").is_file():
        ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)
    ctx.extra["method"] = config.method
    ctx.extra["format"] = ("gguf" if config.method in gguf.TYPES else
                           "compressed-tensors" if config.method in LLM_COMPRESSOR_SCHEMES else "torchao")  # fmt: skip
    ctx.extra["base_model"] = base_model_entry(source, ctx.out)
    ctx.extra["reproducibility"] = reproducibility(texts, config.algorithm)


def _gguf(ctx, unquantized_dir: Path, tokenizer_path: Path, texts: Texts, method: str) -> float:
    """llama.cpp's converter (and quantizer, for the K-quants) writes model.gguf; returns llama.cpp's perplexity
    of it on the held-out windows."""
    from llmforge.console import log

    kind = gguf.TYPES[method]
    checkpoints = ctx.work / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    staging = gguf.converter_input(unquantized_dir, tokenizer_path, checkpoints)
    converted = checkpoints / f"model-{kind.outtype}.gguf" if kind.file_type else ctx.work / gguf.FILE_NAME
    log(f"llama.cpp's converter: {kind.outtype} GGUF")
    gguf.convert(staging, converted, kind.outtype, ctx.out.name, gguf.pre_tokenizer_hint(tokenizer_path),
                 checkpoints / "convert.log")  # fmt: skip
    if kind.file_type:
        log(f"llama.cpp's quantizer: {kind.file_type.removeprefix('LLAMA_FTYPE_MOSTLY_')}")
        gguf.quantize_file(converted, ctx.work / gguf.FILE_NAME, kind.file_type)
        converted.unlink()  # the f16 file is as large as the model: not kept in the artifact
    shutil.rmtree(staging)  # links to the model's files and a copy of its tokenizer
    ctx.stats["tensor_types"] = gguf.tensor_types(ctx.work / gguf.FILE_NAME)
    log(f"tensors by type: {ctx.stats['tensor_types']}")
    log("measuring the GGUF with llama.cpp on the same held-out windows")
    ctx.extra["gguf"] = gguf.versions()
    return gguf.perplexity(ctx.work / gguf.FILE_NAME, texts.held_out)


def budget_hints(config: Config, group: int | str) -> str:
    """What is left to try for a quantized model beyond its perplexity budget, given what this run did."""
    if config.method in gguf.TYPES:
        larger = [m for m, kind in gguf.TYPES.items() if kind.bits > BITS[config.method] and kind.bits < 16]
        return (
            f"a larger GGUF type ({', '.join(larger)})"
            if larger
            else "another model: f16 is the model itself"
        )
    calibrated = ["gptq", "awq"] if config.method in GROUPED else ["gptq"]
    hints = (
        [f"--algorithm {name}" for name in calibrated if name != config.algorithm]
        if config.method in LLM_COMPRESSOR_SCHEMES
        else []
    )
    if config.method in GROUPED and not config.zero_point:
        hints.append("--zero-point")
    if isinstance(group, int) and group > 32:
        hints.append("a smaller --group-size (32)")
    return ", ".join([*hints, "keeping sensitive layers in full precision (ignore)", "more bits (w8a16)"])


def reproducibility(texts: Texts, algorithm: str) -> dict:
    """What the same fingerprint promises about the weights (manifest `extra.reproducibility`).

    Round to nearest (rtn, torchao) scales each weight row by its own maximum: the same bytes anywhere. GPTQ and
    AWQ feed the calibration windows in a fixed order (llm-compressor would shuffle them with an unseeded
    generator), so a re-run gives the same bytes, but GPTQ's Hessians and AWQ's activation statistics and losses
    are sums over the calibration activations whose order of addition, and so the last bits, follow torch's thread
    count and the CPU or GPU kernels: recorded here."""
    import torch

    if not texts.calibration:
        return {"deterministic": True}
    sums = {"gptq": "GPTQ sums calibration activations into Hessians",
            "awq": "AWQ chooses its scales from sums over the calibration activations"}[algorithm]  # fmt: skip
    return {"deterministic": "same torch version, device and thread count",
            "torch_threads": torch.get_num_threads(),
            "why": f"{sums}; the order of those float sums follows the thread count and kernels, so the weights "
                   "can differ in the last bits elsewhere"}  # fmt: skip


def _llm_compressor(model, texts: Texts, config: Config, group: int | str, work: Path) -> None:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if config.method in GROUPED:  # the preset (W4A16 / W8A16) with the chosen group size in place of its 128
        grouped = isinstance(group, int)
        weights = QuantizationArgs(num_bits=BITS[config.method], type="int", symmetric=not config.zero_point,
                                   strategy="group" if grouped else "channel", group_size=group if grouped else None)  # fmt: skip
        scheme = {"config_groups": {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}}
    else:
        scheme = {"targets": "Linear", "scheme": LLM_COMPRESSOR_SCHEMES[config.method]}
    if texts.calibration:
        from datasets import Dataset

        dataset = Dataset.from_dict({"input_ids": texts.calibration,
                                     "attention_mask": [[1] * len(w) for w in texts.calibration]})  # fmt: skip
        if config.algorithm == "awq":  # AWQ only scales channels; the quantization modifier then rounds
            from llmcompressor.modifiers.transform import AWQModifier

            recipe = [AWQModifier(), QuantizationModifier(ignore=config.ignore, **scheme)]
        else:
            recipe = GPTQModifier(ignore=config.ignore, **scheme)
        with _single_process_without_an_accelerator():
            # in order: llm-compressor's shuffle is unseeded, and gave other weights on every run
            oneshot(model=model, recipe=recipe, dataset=dataset, num_calibration_samples=len(texts.calibration),
                    max_seq_length=max(len(w) for w in texts.calibration), shuffle_calibration_samples=False)  # fmt: skip
    else:
        oneshot(model=model, recipe=QuantizationModifier(ignore=config.ignore, **scheme))
    # oneshot leaves every module wrapped in compressed-tensors' offload cache (onload and offload both on the CPU
    # here). Saving converts those to accelerate hooks and back, and the way back failed now and then on packed
    # int32 weights ("cannot assign 'torch.IntTensor' as parameter 'weight_packed'", seen in a full suite run):
    # unwrapping first leaves the tensors where they are and the save nothing to convert.
    from compressed_tensors.offload import remove_dispatch

    remove_dispatch(model)
    model.save_pretrained(work, save_compressed=True)


@contextlib.contextmanager
def _single_process_without_an_accelerator():
    """Two places where llm-compressor 0.14's AWQ assumes an accelerator, on a machine without one:
    - it pins its cached activations in page-locked memory before each grid search (for faster copies to the GPU),
      and torch refuses to pin ("Cannot access accelerator device when none is available"): skipped;
    - in a process where torch.distributed is initialized (one process: an in-process pretrain before it left its
      group), it all-reduces its statistics on the accelerator ("'NoneType' object has no attribute 'type'"):
      with one process the sums are already whole, so compressed-tensors' single-process switch is set.
    Neither changes a value."""
    import compressed_tensors.distributed.utils as dist_utils
    import torch
    import torch.distributed as dist
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    pin, single = IntermediatesCache.pin_memory, dist_utils._force_single_threaded
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() == 1:
        dist_utils._force_single_threaded = True
    try:
        yield
    finally:
        IntermediatesCache.pin_memory, dist_utils._force_single_threaded = pin, single


def _torchao(unquantized_dir: Path, method: str, work: Path) -> None:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    scheme = Int8WeightOnlyConfig() if method == "torchao-int8" else Int8DynamicActivationInt8WeightConfig()
    model = AutoModelForCausalLM.from_pretrained(unquantized_dir, quantization_config=TorchAoConfig(scheme))
    model.save_pretrained(work, safe_serialization=True)


FLAGS = (
    Flag("method"),
    Flag("algorithm"),
    Flag("group_size", type=str),
    Flag("zero_point", "--zero-point/--no-zero-point"),
    Flag("calibration_samples"),
    Flag("seq_len"),
    Flag("eval_tokens"),
)


@stage_command(FLAGS)
def command(
    model: Annotated[str, typer.Argument(help="A model or adapter artifact (or Hugging Face directory).")],
    data: Annotated[
        str, typer.Option("--data", help="Tokens or documents artifact: calibration and held-out text.")
    ],
    output: Path,
    config: Config,
    force: bool = False,
) -> None:
    run(model, data, output, config, force=force)
