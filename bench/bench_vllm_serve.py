"""Serving on CPU: the embedded server against vLLM's CPU build, both through `llmforge serve`, same model, same
prompts, same requests.

The model and prompts are bench_serve.py's (a random Llama of a preset size, BPE tokenizer trained on Python
standard library sources). Every request streams exactly `--max-tokens` tokens (`ignore_eos`, greedy) through the
OpenAI completions endpoint, from 1, 4 and 16 concurrent clients: throughput (completion tokens/s over the wall
time), time to first token and latency (p50/p95), and the ratio vLLM / embedded. vLLM runs from its own environment
(`make install-vllm`), with the settings `serve --backend vllm` gives it on a CPU (eager, one process); its KV cache
is VLLM_CPU_KVCACHE_SPACE GiB (1 unless set). One run; startup times are printed too.

    .venv/bin/python bench/bench_vllm_serve.py [--preset small] [--requests 32] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import CONCURRENCY, build, corpus, load_server, prompts_from  # noqa: E402


def start(model: Path, backend: str, log: Path) -> tuple[subprocess.Popen, str, float]:
    """`llmforge serve MODEL --backend BACKEND --port 0`; the URL and the seconds until it served."""
    begin = time.perf_counter()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    process = subprocess.Popen([sys.executable, "-m", "llmforge", "serve", str(model), "--port", "0", "--backend",
                                backend, "--set", "log_level=warning"], stdout=subprocess.PIPE,
                               stderr=open(log, "w"), text=True, env=env)  # fmt: skip
    ready, _, _ = select.select([process.stdout], [], [], 1800)
    url = process.stdout.readline().strip() if ready else ""
    if not url:
        process.kill()
        raise SystemExit(f"the {backend} server did not start:\n{log.read_text()[-3000:]}")
    return process, url, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    texts = corpus()
    prompts = prompts_from(texts, args.requests)
    results: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-serve-") as scratch:
        work = Path(scratch)
        model_dir, _ = build(work, args.preset, texts)
        for backend in ("embedded", "vllm"):
            process, url, startup = start(model_dir, backend, work / f"{backend}.log")
            print(f"{backend}: serving after {startup:.0f} s", flush=True)
            try:
                load_server(url, model_dir.name, prompts[:2], 1, 4)  # warm-up
                results[backend] = {}
                for clients in CONCURRENCY:
                    results[backend][clients] = load_server(
                        url, model_dir.name, prompts, clients, args.max_tokens
                    )
                    print(backend, clients, results[backend][clients], flush=True)
            finally:
                process.terminate()
                process.wait(timeout=120)
    print(
        "\n| clients | server | tokens/s | TTFT p50 / p95 (s) | latency p50 / p95 (s) | vLLM / embedded tokens/s |"
    )
    print("|---|---|---|---|---|---|")
    for clients in CONCURRENCY:
        for backend in ("embedded", "vllm"):
            r = results[backend][clients]
            ratio = r["tokens_per_s"] / results["embedded"][clients]["tokens_per_s"]
            print(f"| {clients} | {backend} | {r['tokens_per_s']:.0f} | {r['ttft_p50']:.3f} / {r['ttft_p95']:.3f} | "
                  f"{r['latency_p50']:.2f} / {r['latency_p95']:.2f} | {ratio:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
