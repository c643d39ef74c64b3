"""GGUF files for llama.cpp, Ollama and LM Studio, made and measured by llama.cpp itself.

llama.cpp's own converter (convert_hf_to_gguf.py, from a llama.cpp checkout: LLAMA_CPP_DIR, else the copy
`make install-gguf` puts in the environment's share/llama.cpp) writes the f16 / bf16 / Q8_0 file; llama.cpp's
quantizer (through llama-cpp-python) makes the K-quants from the f16 file; llama.cpp scores the result on the
same held-out token windows transformers scored the source on, so the perplexity change is llama.cpp's answer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmforge.errors import InputError

# {% generation %} marks the assistant's tokens for training (TRL); llama.cpp's and Ollama's template engines do
# not know the tag, and serving never needs it.
GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclass(frozen=True)
class GgufType:
    outtype: str  # what the converter writes
    file_type: str | None  # llama.cpp's quantization of the converter's file (llama_ftype name), if any
    bits: int
    block: int | str  # weights sharing a scale: 32 for Q8_0, super-blocks of 256 for the K-quants


TYPES = {
    "gguf-f16": GgufType("f16", None, 16, "none"),  # no scales: 16-bit floats
    "gguf-bf16": GgufType("bf16", None, 16, "none"),
    "gguf-q8_0": GgufType("q8_0", None, 8, 32),
    "gguf-q6_k": GgufType("f16", "LLAMA_FTYPE_MOSTLY_Q6_K", 6, 256),
    "gguf-q5_k_m": GgufType("f16", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 5, 256),
    "gguf-q4_k_m": GgufType("f16", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 4, 256),
}
FILE_NAME = "model.gguf"
# a GGUF split in parts (llama.cpp's gguf-split, the converter's --split-max-size): NAME-00001-of-00003.gguf, ...
SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def model_file(source) -> Path:
    """The GGUF a model source names: a gguf artifact's model.gguf, or the .gguf file itself."""
    return Path(source.path) / FILE_NAME if source.artifact is not None else Path(source.path)


def later_part(name: str) -> bool:
    """Whether a file name is a split GGUF's second part or later (its first part names the model)."""
    found = SPLIT_PART.search(name)
    return found is not None and int(found[1]) != 1


def part_names(name: str) -> list[str]:
    """The names of every part of the split GGUF whose part `name` is ([name] for a whole file)."""
    found = SPLIT_PART.search(name)
    if found is None:
        return [name]
    stem, count = name[: found.start()], int(found[2])
    return [f"{stem}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]


def split_parts(file: Path) -> list[Path]:
    """Every file of a split GGUF, given its first part (llama.cpp loads the rest from beside it); [file] for a
    whole one. A later part, or a part missing, is refused in one line."""
    names, found = part_names(file.name), SPLIT_PART.search(file.name)
    if later_part(file.name):
        raise InputError(f"{file}: part {int(found[1])} of {len(names)} of a split GGUF; name its first part, "
                         f"{names[0]}")  # fmt: skip
    parts = [file.with_name(name) for name in names]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise InputError(
            f"{file}: a GGUF split in {len(parts)} parts, and {', '.join(missing)} is not beside it"
        )
    return parts


def fingerprint(file: Path) -> str:
    """The content fingerprint of a GGUF: its sha256, or for a split one the hash of its parts' sha256s."""
    from llmforge.files import canonical_hash, model_file_sha256

    parts = split_parts(file)
    return (
        model_file_sha256(file) if len(parts) == 1 else canonical_hash([model_file_sha256(p) for p in parts])
    )


def merge_parts(file: Path, out: Path) -> None:
    """A split GGUF written as one file, by gguf-py (what `llama-gguf-split --merge` does): transformers reads only
    the file it is given, and would leave the tensors of the other parts at their random initialisation."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    readers = [GGUFReader(str(part)) for part in split_parts(file)]
    first = readers[0].fields
    writer = GGUFWriter(str(out), first["general.architecture"].contents())
    for field in first.values():  # the architecture and the GGUF.* fields the writer writes itself
        if field.name == "general.architecture" or field.name.startswith(("GGUF.", "split.")):
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)  # fmt: skip
    for reader in readers:
        for tensor in reader.tensors:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                   tensor.tensor_type)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for reader in readers:
        for tensor in reader.tensors:
            writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()


def converter_dir() -> Path:
    """The llama.cpp checkout whose converter runs: LLAMA_CPP_DIR, else the environment's share/llama.cpp."""
    configured = os.environ.get("LLAMA_CPP_DIR")
    directory = Path(configured) if configured else Path(sys.prefix) / "share" / "llama.cpp"
    if not (directory / "convert_hf_to_gguf.py").is_file():
        where = f"LLAMA_CPP_DIR={configured}" if configured else f"{directory} (LLAMA_CPP_DIR is not set)"
        raise InputError(f"GGUF needs llama.cpp's converter, and {where} has no convert_hf_to_gguf.py: set "
                         "LLAMA_CPP_DIR to a llama.cpp checkout, or run `make install-gguf`")  # fmt: skip
    return directory


def check_tools(method: str) -> Path:
    """Everything `method` needs, checked before any work: the converter, and llama-cpp-python to quantize and
    score (and sentencepiece, which the converter imports for Llama-family tokenizers)."""
    directory = converter_dir()
    missing = [
        name for name in ("llama_cpp", "sentencepiece", "gguf") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise InputError(f"method {method} needs {' and '.join(missing)}: pip install 'llmforge[gguf]' "
                         "(llama-cpp-python builds from source, a few minutes), or run `make install-gguf`")  # fmt: skip
    return directory


def check_runtime() -> None:
    """llama-cpp-python, which runs a GGUF (serve), is importable."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise InputError("a GGUF is served by llama.cpp, and llama-cpp-python is not installed: run `make "
                         "install-gguf`, or pip install 'llmforge[gguf]'")  # fmt: skip


def converter_input(model_dir: Path, tokenizer_dir: Path, work: Path) -> Path:
    """A directory the converter reads: the model's files linked, its tokenizer copied and made plain for
    llama.cpp (the chat template without {% generation %}; a byte-level vocabulary that transformers' GGUF
    import marked byte_fallback written as the byte-level BPE it is, so the converter reads it as one)."""
    from llmforge.model.loading import TOKENIZER_FILES, TOKENIZER_SIDE_FILES

    staging = work / "gguf-input"
    staging.mkdir(parents=True, exist_ok=True)
    links = {file.name: file for file in Path(model_dir).iterdir()
             if file.is_file() and file.name not in (*TOKENIZER_FILES, *TOKENIZER_SIDE_FILES, "artifact.json")}  # fmt: skip
    # the side files (SentencePiece models, GPT-2 vocabularies) from the tokenizer's directory (an adapter's or the
    # model's)
    links.update({name: Path(tokenizer_dir) / name for name in TOKENIZER_SIDE_FILES
                  if (Path(tokenizer_dir) / name).is_file()})  # fmt: skip
    for name, file in links.items():
        link = staging / name
        if link.is_symlink():  # a resumed run: the link may point at a file since replaced
            link.unlink()
        link.symlink_to(file.resolve())
    for name in TOKENIZER_FILES:
        source = Path(tokenizer_dir) / name
        if not source.is_file():
            continue
        text = source.read_text(encoding="utf-8")
        if name == "tokenizer.json":
            text = byte_level(text)
        elif name == "tokenizer_config.json":
            config = json.loads(text)
            if isinstance(config.get("chat_template"), str):
                config["chat_template"] = GENERATION_TAG.sub("", config["chat_template"])
            text = json.dumps(config, indent=2, ensure_ascii=False)
        elif name == "chat_template.jinja":
            text = GENERATION_TAG.sub("", text)
        (staging / name).write_text(text, encoding="utf-8")
    return staging


def byte_level(text: str) -> str:
    """A tokenizer.json whose byte-level BPE vocabulary transformers' GGUF import marked `byte_fallback` (with a
    SentencePiece-style decoder) written as the byte-level BPE it is; any other tokenizer.json as it was."""
    tokenizer = json.loads(text)
    model, pre = tokenizer.get("model") or {}, json.dumps(tokenizer.get("pre_tokenizer"))
    if model.get("type") == "BPE" and model.get("byte_fallback") and '"ByteLevel"' in pre:
        model["byte_fallback"] = False
        tokenizer["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                "use_regex": True}  # fmt: skip
        return json.dumps(tokenizer, ensure_ascii=False)
    return text


def pre_tokenizer_hint(tokenizer_dir: Path) -> str | None:
    """llama.cpp's name for the tokenizer's pre-tokenizer where llmforge knows it: its own (the GPT-4 regex with
    single digits) is Qwen 2's, character for character."""
    from llmforge.data.tokenizer import SPLIT_PATTERN

    file = Path(tokenizer_dir) / "tokenizer.json"
    if not file.is_file():
        return None
    pre = json.loads(file.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and (steps[0].get("pattern") or {}).get("Regex") == SPLIT_PATTERN
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex")):  # fmt: skip
        return "qwen2"
    return None


def check_vocabulary(model_dir: Path, tokenizer_dir: Path, model: str | Path) -> None:
    """The converter's vocabulary pass alone (`--vocab-only`, seconds), before any work: a tokenizer or an
    architecture llama.cpp cannot take stops the stage here, in one line."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llmforge-gguf-") as scratch:
        staging = converter_input(model_dir, tokenizer_dir, Path(scratch))
        convert(staging, Path(scratch) / "vocab.gguf", "f16", "vocab", pre_tokenizer_hint(tokenizer_dir),
                Path(scratch) / "convert.log", vocab_only=True, label=str(model))  # fmt: skip


def convert(input_dir: Path, out_file: Path, outtype: str, name: str, hint: str | None, log_file: Path,
            vocab_only: bool = False, label: str | None = None) -> None:  # fmt: skip
    """llama.cpp's converter, its chatter into `log_file`; a failure is one line naming its error."""
    env = {**os.environ, **({"LLMFORGE_GGUF_PRE": hint} if hint else {})}
    command = [sys.executable, "-m", "llmforge.model.gguf_converter", str(converter_dir()), str(input_dir),
               "--outfile", str(out_file), "--outtype", outtype, "--model-name", name,
               *(["--vocab-only"] if vocab_only else [])]  # fmt: skip
    with open(log_file, "w", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line for line in lines if re.match(r"^\w*(Error|Exception|Interrupt)\b", line)]
        reason = (errors or lines or ["no output"])[-1].strip()
        where = "" if vocab_only else f" (its log: {log_file})"
        raise InputError(f"{label or input_dir}: llama.cpp's converter failed: {reason}{where}")


def quantize_file(source: Path, out_file: Path, file_type: str) -> None:
    """llama.cpp's quantizer (llama-quantize's library call) from the converter's f16 file."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, file_type)
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out_file).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {file_type}")


def perplexity(path: Path, token_windows: list[list[int]]) -> float:
    """exp(mean negative log-likelihood) of every next token inside the windows, as llama.cpp computes the
    logits: the same measure as llmforge.model.perplexity on a transformers model."""
    import math

    import llama_cpp
    import torch

    llm = llama_cpp.Llama(str(path), n_ctx=max(len(w) for w in token_windows), logits_all=True, verbose=False,
                          n_threads=torch.get_num_threads())  # fmt: skip
    total, count = 0.0, 0
    try:
        for window in token_windows:
            llm.reset()
            llm.eval(window)
            logits = torch.from_numpy(llm.scores[: len(window) - 1]).float()
            targets = torch.tensor(window[1:])
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += len(targets)
    finally:
        llm.close()
    return math.exp(total / count)


def tensor_types(path: Path) -> str:
    """How many tensors of each type the file holds, most first ("Q5_0 166, F32 61, Q4_K 16"): a K-quant needs rows
    of a multiple of 256 weights, and llama.cpp stores the tensors whose rows are not at another type (SmolLM2's
    576-wide rows take Q5_0 under Q4_K_M), which the method's name does not say."""
    from collections import Counter

    from gguf import GGUFReader

    counts = Counter(tensor.tensor_type.name for tensor in GGUFReader(str(path)).tensors)
    return ", ".join(f"{name} {count}" for name, count in counts.most_common())


def versions() -> dict[str, str]:
    """What made the file: llama-cpp-python (llama.cpp's library) and the converter's gguf-py."""
    from importlib.metadata import version

    found = {"llama_cpp_python": version("llama-cpp-python")}
    pyproject = converter_dir() / "gguf-py" / "pyproject.toml"
    if pyproject.is_file():
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        if match:
            found["converter_gguf_py"] = match.group(1)
    return found
