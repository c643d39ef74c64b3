"""The embedded server's engine against transformers' own continuous batching (`generate_batch`), on CPU.

Both get the same random Llama of a preset size, the same prompts (cut from the Python standard library's
sources, tokenized by a BPE trained on them) all submitted at once, greedy, exactly `--max-tokens` new tokens per
request, in the same process, one after the other, `--repeat` times interleaved (best kept: other work on a shared
machine only ever slows a run down). No HTTP: this is the engine alone (bench/bench_serve.py measures the server).

    .venv/bin/python bench/bench_engine.py [--preset small] [--requests 32] [--max-tokens 64] [--batch 16]

Prints one table (tokens/s, and how many answers are the same token for token); the figures go to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

from llmforge.serving.engine import limit_openmp_spinning


def prompts(count: int) -> tuple[list[str], list[str]]:
    """`count` prompts of 80-200 characters, and the texts they come from (to train the tokenizer on)."""
    texts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = path.read_text(errors="ignore")
        if len(text) >= 400:
            texts.append(text)
        if len(texts) >= 200:
            break
    return [texts[i * 7 % len(texts)][200 : 200 + 80 + 40 * (i % 4)] for i in range(count)], texts


def build(work: Path, preset: str, texts: list[str]):
    from llmforge.data.tokenizer import train_tokenizer
    from llmforge.model.llama import build_config, build_model, special_ids_of

    tokenizer = train_tokenizer(texts, vocab_size=4096)
    config = build_config(preset, len(tokenizer), special_ids_of(tokenizer), max_position_embeddings=1024)
    return build_model(config, seed=0).eval(), tokenizer


def ours(model, tokenizer, inputs: list[list[int]], max_tokens: int, batch: int) -> list[list[int]]:
    """Every request submitted at once to the engine; returns each one's tokens once all have finished."""
    from llmforge.serving.engine import Engine, GenerationRequest, SamplingParams

    engine = Engine(model, tokenizer, eos_token_ids=[], max_model_len=1024, max_batch_size=batch)
    done = threading.Semaphore(0)
    requests = [
        GenerationRequest(ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
                          on_event=lambda event: event.finish_reason and done.release())
        for ids in inputs
    ]  # fmt: skip
    engine.start()
    for request in requests:
        engine.submit(request)
    for _ in requests:
        done.acquire()
    engine.stop()
    return [r.output_ids for r in requests]


def transformers_cb(model, inputs: list[list[int]], max_tokens: int, batch: int) -> list[list[int]]:
    """transformers' `generate_batch` (paged KV cache, continuous batching), greedy, no EOS. The cache is sized
    here: left to itself on CPU, it sizes the cache from the machine's whole memory."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    generation = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    block = 32
    longest = max(map(len, inputs)) + max_tokens
    settings = ContinuousBatchingConfig(block_size=block, num_blocks=len(inputs) * -(-longest // block),
                                        max_batch_tokens=batch * max(map(len, inputs)), max_requests_per_batch=batch)  # fmt: skip
    results = model.generate_batch(inputs, generation_config=generation, continuous_batching_config=settings,
                                   warmup=False)  # fmt: skip
    return [list(result.generated_tokens) for result in results.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="most sequences in one forward, both engines")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    limit_openmp_spinning()
    import torch

    texts_in, corpus = prompts(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = build(Path(tmp), args.preset, corpus)
    inputs = [tokenizer(text)["input_ids"] for text in texts_in]
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {parameters / 1e6:.1f}M parameters, {args.requests} requests x {args.max_tokens} tokens, "
          f"batches of up to {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads",
          file=sys.stderr)  # fmt: skip

    seconds: dict[str, list[float]] = {"ours": [], "transformers": []}
    outputs = {}
    with torch.inference_mode():
        for _ in range(args.repeat):
            for name, run in (("ours", lambda: ours(model, tokenizer, inputs, args.max_tokens, args.batch)),
                              ("transformers", lambda: transformers_cb(model, inputs, args.max_tokens, args.batch))):  # fmt: skip
                started = time.perf_counter()
                outputs[name] = run()
                seconds[name].append(time.perf_counter() - started)
    tokens = {name: sum(map(len, out)) for name, out in outputs.items()}
    same = sum(a == b for a, b in zip(outputs["ours"], outputs["transformers"], strict=True))
    best = {name: min(times) for name, times in seconds.items()}
    print(f"\n{'what':<62} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs transformers':>15}")
    for name, what in (("ours", "llmforge embedded engine (serving/engine.py)"),
                       ("transformers", "transformers generate_batch (continuous batching)")):  # fmt: skip
        rate = tokens[name] / best[name]
        print(f"{what:<62} {tokens[name]:>7} {best[name]:>8.2f} {rate:>9.1f} "
              f"{rate / (tokens['transformers'] / best['transformers']):>14.2f}x")  # fmt: skip
    print(f"identical greedy answers: {same}/{len(inputs)}")


if __name__ == "__main__":
    main()
