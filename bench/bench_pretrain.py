"""Training throughput: `llmforge pretrain` against a minimal plain-PyTorch loop on the same model and data, and
DeepSpeed ZeRO 0 vs 2 vs 3 on two processes (memory and speed); on a GPU, a sweep of presets and settings
(attention kernel, torch.compile, Liger kernels) with tokens/s, MFU, memory and the first step's compile time.

The data is real text found on this machine (docstrings of the Python standard library), encoded with a BPE
tokenizer trained on it. Both sides train the same randomly initialised Llama on the same packed windows in the
same order, with AdamW, the same schedule and gradient clipping; the plain loop has no DeepSpeed, no checkpoints,
no metrics log. On a GPU the MFU of both is printed too (peak from llmforge.model.estimate's table).

    .venv/bin/python bench/bench_pretrain.py [--preset small] [--steps 30] [--zero-preset 125m] [--threads 1]
    python bench/bench_pretrain.py --tokens TOKENS --preset 125m --seq-len 2048 --micro 16 --zero-nproc 1  # one GPU
    python bench/bench_pretrain.py --tokens TOKENS --sweep 125m,350m,1b --deadline 420 --markdown sweep.md  # GPU

Prints tables (--markdown also writes them to a file, rewritten after every run); the figures go to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import pkgutil
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from llmforge.artifacts import InputRef, canonical_hash, run_stage
from llmforge.config import StageConfig
from llmforge.model.kernels import FUSED_LOSS


class BenchTokens(StageConfig):
    """Standard-library docstrings encoded into shards."""

    kind: str = "bench"


def stdlib_texts(limit_bytes: int) -> list[str]:
    texts, size = [], 0
    for module in sorted(
        m.name for m in pkgutil.iter_modules() if not m.name.startswith(("_", "test", "idle"))
    ):
        try:
            imported = __import__(module)
        except Exception:  # noqa: BLE001 (some modules need a display, a database...)
            continue
        for _, value in inspect.getmembers(imported):
            doc = inspect.getdoc(value) if callable(value) else None
            if doc and len(doc) > 200:
                texts.append(doc)
                size += len(doc)
        if size >= limit_bytes:
            break
    return list(dict.fromkeys(texts))


def tokens_artifact(root: Path, vocab_size: int, megabytes: float) -> Path:
    from llmforge.data.shards import ShardWriter, dtype_for_vocab, write_index
    from llmforge.data.tokenizer import tokenizer_fingerprint, train_tokenizer
    from llmforge.model.llama import special_ids_of

    texts = stdlib_texts(int(megabytes * 1e6))
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)

    def body(ctx):
        tokenizer.save_pretrained(ctx.work / "tokenizer")
        dtype = dtype_for_vocab(len(tokenizer))
        splits = {}
        for split, part in (("train", texts[len(texts) // 50 :]), ("val", texts[: len(texts) // 50])):
            writer = ShardWriter(ctx.work, split, dtype, tokenizer.eos_token_id)
            for ids in tokenizer(part)["input_ids"]:
                writer.add(ids)
            splits[split] = writer.close()
        index = write_index(ctx.work, dtype, len(tokenizer), special_ids_of(tokenizer), splits)
        ctx.stats["tokens"] = index["splits"]["train"]["tokens"]
        ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work / "tokenizer")

    ref = InputRef(path="(stdlib docstrings)", kind="raw", fingerprint=canonical_hash(texts))
    return run_stage("tokenize", "tokens", BenchTokens(), [ref], root / "tokens", body)


def settings(preset: str, seq_len: int, micro: int, accumulation: int, steps: int, processes: int = 1,
             attention: str = "sdpa", compile: bool = False, experts: int = 0, **extra) -> dict:  # fmt: skip
    batch = seq_len * micro * accumulation * processes
    return {"model": {"preset": preset, "attention": attention, "num_experts": experts}, "compile": compile,
            "kernels": "none",
            "seq_len": seq_len, "micro_batch_size": micro, "batch_tokens": batch,
            "train_tokens": batch * steps, "optim": {"lr": 1e-3, "warmup_steps": 2},
            "checkpoint": {"every": 0}, "eval": {"every": 0}, "logging": {"every": 1, "tensorboard": False},
            **extra}  # fmt: skip


def steady(values: list[float]) -> float:
    """Median after the first 3 steps (allocations, warm-up)."""
    return statistics.median(values[3:] if len(values) > 5 else values)


def llmforge_run(tokens: Path, out: Path, config: dict) -> dict:
    from llmforge.artifacts import Artifact
    from llmforge.files import read_jsonl
    from llmforge.stages.pretrain import Config, run

    shutil.rmtree(out, ignore_errors=True)  # a finished artifact with the same settings would be "up to date"
    started = time.perf_counter()
    run(tokens, out, Config.model_validate(config))
    seconds = time.perf_counter() - started
    records = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    stats = Artifact.open(out).stats
    return {"tokens_per_s": steady([r["tokens_per_s"] for r in records]), "wall_s": seconds,
            "memory_gb": max(r["memory_gb"] for r in records), "loss_final": stats["loss_final"],
            "mfu": steady([r["mfu"] for r in records]) if records[0]["mfu"] is not None else None,
            "first_step_extra_s": stats.get("first_step_extra_seconds"), "parameters": stats["parameters"],
            "settings": f"{stats['attention']}, {'compiled' if stats['compiled'] else 'eager'}, "
                        f"kernels {stats['kernels']}"}  # fmt: skip


def plain_run(tokens: Path, out: Path, config: dict) -> dict:
    """The minimal loop a researcher would write: model, AdamW, schedule, clip, accumulate, save; with the same
    attention kernel (FlexAttention takes llmforge's document block mask) and torch.compile as the llmforge run."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from llmforge.model.attention import model_inputs
    from llmforge.model.estimate import ModelShape, device_peak_flops
    from llmforge.model.llama import build_config, build_model, router_aux_coefficient, special_ids_of
    from llmforge.train.data import PackedWindows
    from llmforge.train.schedule import Schedule

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokenizer = AutoTokenizer.from_pretrained(tokens / "tokenizer")
    seq_len, micro = config["seq_len"], config["micro_batch_size"]
    accumulation = config["batch_tokens"] // (seq_len * micro)
    steps = config["train_tokens"] // config["batch_tokens"]
    model_config = build_config(config["model"]["preset"], len(tokenizer), special_ids_of(tokenizer),
                                max_position_embeddings=seq_len, num_experts=config["model"].get("num_experts", 0))  # fmt: skip
    # a mixture of experts: add the router's balance loss, as transformers computes it
    moe = router_aux_coefficient(model_config.to_dict())
    model_config.use_cache = False
    attention = config["model"].get("attention", "sdpa")
    model_config._attn_implementation = attention
    model = build_model(model_config, seed=config.get("seed", 0)).to(device)

    def cross_entropy(logits, targets):
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))

    if config.get("compile"):
        model.compile()
        cross_entropy = torch.compile(cross_entropy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                                  fused=device == "cuda")  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule("cosine", steps, 2))
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    data = PackedWindows(tokens, "train", seq_len, seed=config.get("seed", 0))
    rates = []
    for step in range(steps):
        clock = time.perf_counter()
        losses = []
        for micro_step in range(accumulation):
            batch = data.micro_batch(step, micro_step, 0, micro, accumulation, 1)
            ids, targets, positions = (torch.from_numpy(a).to(device) for a in
                                       (batch.input_ids, batch.targets, batch.position_ids))  # fmt: skip
            with autocast:
                outputs = model(**model_inputs(ids, positions, attention), output_router_logits=bool(moe))
            loss = cross_entropy(outputs.logits, targets) / accumulation
            objective = loss + moe * outputs.aux_loss / accumulation if moe else loss
            objective.backward()
            losses.append(loss.detach())  # the cross-entropy, as llmforge logs it
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        final = torch.stack(losses).sum().item()  # synchronises, like llmforge's logging
        rates.append(config["batch_tokens"] / (time.perf_counter() - clock))
    memory = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    model.save_pretrained(out)
    seconds = time.perf_counter() - started
    tokens_per_s = steady(rates)
    peak = device_peak_flops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    flops = ModelShape.from_hf_config(model_config.to_dict()).flops_per_token(seq_len) * tokens_per_s
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    first_extra = config["batch_tokens"] / rates[0] - config["batch_tokens"] / tokens_per_s
    return {"tokens_per_s": tokens_per_s, "wall_s": seconds, "loss_final": final, "memory_gb": memory,
            "mfu": flops / peak if peak else None, "first_step_extra_s": max(0.0, first_extra),
            "settings": f"{attention}, {'compiled' if config.get('compile') else 'eager'}, kernels none"}  # fmt: skip


# The sweep: what to vary, and the order the runs go in, most telling first. Sizes 0, 1, 2 are the presets given to
# --sweep, in order; runs that would start past --deadline are skipped. Liger's fused loss is not tried compiled:
# that fails (bench/RESULTS.md) and llmforge refuses the pair; its RMSNorm and SwiGLU alone are.
VARIANTS = {
    "sdpa-mask eager": {"attention": "sdpa", "compile": False},
    "sdpa-mask compiled": {"attention": "sdpa", "compile": True},
    "flex eager": {"attention": "flex_attention", "compile": False},
    "flex compiled": {"attention": "flex_attention", "compile": True},
    "flex eager + liger": {"attention": "flex_attention", "compile": False, "kernels": "liger"},
    "sdpa-mask eager + liger": {"attention": "sdpa", "compile": False, "kernels": "liger"},
    # each Liger kernel on its own
    "flex eager + rms_norm": {"attention": "flex_attention", "compile": False, "kernels": "rms_norm"},
    "flex eager + swiglu": {"attention": "flex_attention", "compile": False, "kernels": "swiglu"},
    "flex eager + fused loss": {"attention": "flex_attention", "compile": False, "kernels": FUSED_LOSS},
    "flex compiled + rms_norm": {"attention": "flex_attention", "compile": True, "kernels": "rms_norm"},
    "flex compiled + swiglu": {"attention": "flex_attention", "compile": True, "kernels": "swiglu"},
    "flex compiled micro 32": {"attention": "flex_attention", "compile": True, "micro": 32},
}
# (size, variant, loop, seed). Runs 0-15: the first H200 call's order (2026-12-04). From 16 (SWEEP_FROM=16): each
# Liger kernel on its own, the defaults over seeds 0-2 (and the plain loop's, for the ratio's spread), the rows the
# first budget did not reach.
SWEEP = [
    (0, "sdpa-mask eager", "llmforge", 0), (0, "flex compiled", "llmforge", 0), (1, "flex compiled", "llmforge", 0),
    (2, "flex compiled", "llmforge", 0), (0, "flex compiled", "plain", 0), (2, "flex compiled", "plain", 0),
    (1, "flex compiled", "plain", 0), (0, "flex eager", "llmforge", 0), (0, "flex eager + liger", "llmforge", 0),
    (1, "flex eager", "llmforge", 0), (1, "flex eager + liger", "llmforge", 0),
    (2, "flex eager + liger", "llmforge", 0), (0, "sdpa-mask compiled", "llmforge", 0),
    (1, "sdpa-mask eager", "llmforge", 0), (2, "sdpa-mask eager", "llmforge", 0),
    (0, "sdpa-mask eager + liger", "llmforge", 0),
    # 16-
    (0, "flex eager", "llmforge", 0), (0, "flex eager + rms_norm", "llmforge", 0),
    (0, "flex eager + swiglu", "llmforge", 0), (0, "flex eager + fused loss", "llmforge", 0),
    (0, "flex eager + liger", "llmforge", 0),
    (0, "flex compiled", "llmforge", 0), (0, "flex compiled", "llmforge", 1), (0, "flex compiled", "llmforge", 2),
    (0, "flex compiled", "plain", 0), (0, "flex compiled", "plain", 1), (0, "flex compiled", "plain", 2),
    (1, "flex compiled", "llmforge", 0), (1, "flex compiled", "llmforge", 1), (1, "flex compiled", "llmforge", 2),
    (0, "flex compiled + rms_norm", "llmforge", 0), (0, "flex compiled + swiglu", "llmforge", 0),
    (0, "flex compiled micro 32", "llmforge", 0), (0, "sdpa-mask compiled", "llmforge", 0),
    (1, "sdpa-mask eager", "llmforge", 0), (2, "sdpa-mask eager", "llmforge", 0),
    (1, "flex compiled", "plain", 0), (1, "flex compiled", "plain", 1), (1, "flex compiled", "plain", 2),
    (2, "flex compiled", "llmforge", 0), (2, "flex compiled", "llmforge", 1), (2, "flex compiled", "llmforge", 2),
    (1, "flex eager", "llmforge", 0), (1, "flex eager + rms_norm", "llmforge", 0),
    (1, "flex eager + swiglu", "llmforge", 0), (1, "flex eager + fused loss", "llmforge", 0),
]  # fmt: skip
MICRO = {"1b": 8}  # sequences per micro-batch where --micro is too many (the 1b's eager runs on an 80 GB GPU)


def sweep(tokens: Path, root: Path, args) -> None:
    """Each (preset, variant, loop) of SWEEP in one process, a table row after each run (written to --markdown
    as it grows, so a run stopped by a time limit still leaves its table)."""
    import gc

    import torch

    from llmforge.errors import InputError

    presets = args.sweep.split(",")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    header = (f"Sweep on {device}, torch {torch.__version__}: seq {args.seq_len}, {args.sweep_steps} steps of "
              f"micro-batch x {args.accumulation} accumulation, bf16 where the GPU has it, document masking on, "
              "DeepSpeed ZeRO-0 (llmforge) or none (plain); steady = median after step 3; first step + = step "
              "1's time beyond a steady step (compiling)\n\n"
              "| preset | variant | loop | seed | settings (as run) | tokens/s | MFU | peak memory (GB) "
              "| first step + (s) | final loss | run (s) |\n|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    rows: list[str] = []

    def write() -> None:
        table = header + "\n" + "\n".join(rows)
        print(table.splitlines()[-1] if rows else table, flush=True)
        if args.markdown:
            args.markdown.write_text(table + "\n")

    write()
    started = time.perf_counter()
    for size, variant, loop, seed in SWEEP[args.start :]:
        if size >= len(presets) or (args.variants and variant not in args.variants.split(",")):
            continue
        preset = presets[size]
        if args.deadline and time.perf_counter() - started > args.deadline:
            rows.append(f"| {preset} | {variant} | {loop} | {seed} | skipped: past the {args.deadline:.0f} s "
                        "deadline | | | | | | |")  # fmt: skip
            write()
            continue
        changes = dict(VARIANTS[variant])
        micro = changes.pop("micro", MICRO.get(preset, args.micro))
        config = settings(
            preset, args.seq_len, micro, args.accumulation, args.sweep_steps, seed=seed, **changes
        )
        clock = time.perf_counter()
        out = root / f"{preset}-{variant}-{loop}-{seed}".replace(" ", "_").replace(",", "")
        try:
            result = (plain_run if loop == "plain" else llmforge_run)(tokens, out, config)
        except InputError as exc:
            rows.append(f"| {preset} | {variant} | {loop} | {seed} | refused: {exc} | | | | | | |")
        except Exception as exc:  # noqa: BLE001 (an OOM or a kernel that does not run here: the row says so)
            traceback.print_exc()  # the whole story in the log
            message = (str(exc).strip().splitlines() or [""])[0][:160]
            rows.append(
                f"| {preset} | {variant} | {loop} | {seed} | failed: {type(exc).__name__}: {message} | | | | | | |"
            )
        else:
            mfu = f"{result['mfu']:.1%}" if result.get("mfu") is not None else "n/a"
            memory = f"{result['memory_gb']:.1f}" if result.get("memory_gb") is not None else "n/a"
            extra = result.get("first_step_extra_s")
            rows.append(f"| {preset} | {variant} | {loop} | {seed} | {result['settings']} | "
                        f"{result['tokens_per_s']:,.0f} | "
                        f"{mfu} | {memory} | {'n/a' if extra is None else f'{extra:.1f}'} | "
                        f"{result['loss_final']:.4f} | {time.perf_counter() - clock:.0f} |")  # fmt: skip
        write()
        for path in (
            out,
            out.with_name(out.name + ".partial"),
        ):  # a 1b model is 5 GB; the disk is not endless
            shutil.rmtree(path, ignore_errors=True)
        torch._dynamo.reset()  # each model compiles afresh (and never hits dynamo's recompile limit)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="model for llmforge vs plain PyTorch")
    parser.add_argument("--zero-preset", default="125m", help="model for the ZeRO 0/2/3 comparison")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--zero-steps", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the single-process runs")
    parser.add_argument("--megabytes", type=float, default=3.0, help="text to train on")
    parser.add_argument(
        "--tokens", type=Path, help="an existing tokens artifact instead of stdlib docstrings"
    )
    parser.add_argument("--zero-nproc", type=int, default=2, help="processes in the ZeRO comparison (GPUs)")
    parser.add_argument(
        "--attention", default="sdpa", help="llmforge vs plain: attention (sdpa, flex_attention)"
    )
    parser.add_argument("--compile", action="store_true", help="llmforge vs plain: torch.compile both")
    parser.add_argument(
        "--experts", type=int, default=0, help="llmforge vs plain: a mixture of this many experts"
    )
    parser.add_argument("--sweep", help="presets for the sweep instead, e.g. 125m,350m,1b (sizes 0, 1, 2)")
    parser.add_argument("--variants", help="sweep only these variants (comma-separated names of VARIANTS)")
    parser.add_argument("--sweep-steps", type=int, default=20, help="steps per sweep run")
    parser.add_argument("--accumulation", type=int, default=4, help="micro-batches per sweep step")
    parser.add_argument("--deadline", type=float, help="sweep: start no run after this many seconds")
    parser.add_argument("--start", type=int, default=0, help="sweep: begin at this run of SWEEP's order")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    tokens = args.tokens or tokens_artifact(root, vocab_size=8192, megabytes=args.megabytes)
    print(f"data: {json.loads((tokens / 'artifact.json').read_text())['stats']['tokens']:,} training tokens of "
          f"{tokens if args.tokens else 'stdlib docstrings'}; device: "
          f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, "
          f"{args.threads} thread(s)", file=sys.stderr)  # fmt: skip

    if args.sweep:
        sweep(tokens, root, args)
        shutil.rmtree(root, ignore_errors=True)
        return
    rows = []
    config = settings(args.preset, args.seq_len, args.micro, 2, args.steps, attention=args.attention,
                      compile=args.compile, experts=args.experts)  # fmt: skip
    for _ in range(2):  # interleaved, best of two: the machine is shared
        rows.append(
            ("llmforge pretrain (ZeRO-0, 1 process)", llmforge_run(tokens, root / "llmforge", config))
        )
        rows.append(("plain PyTorch loop", plain_run(tokens, root / "plain", config)))
    best = {}
    for name, result in rows:
        if name not in best or result["tokens_per_s"] > best[name]["tokens_per_s"]:
            best[name] = result
    plain = best["plain PyTorch loop"]["tokens_per_s"]
    sparse = f" with {args.experts} experts (top-2)" if args.experts else ""
    print(f"\n{args.preset} model{sparse}, seq {args.seq_len}, micro-batch {args.micro} x 2 accumulation, "
          f"{args.steps} steps")  # fmt: skip
    print("| what | tokens/s (steady) | vs plain | MFU | peak memory (GB) | whole run (s) | final loss |\n"
          "|---|---|---|---|---|---|---|")  # fmt: skip
    for name, result in best.items():
        mfu = f"{result['mfu']:.1%}" if result.get("mfu") is not None else "n/a (CPU)"
        memory = f"{result['memory_gb']:.2f}" if result.get("memory_gb") is not None else "n/a"
        print(f"| {name} | {result['tokens_per_s']:,.0f} | {result['tokens_per_s'] / plain:.2f}x | {mfu} | "
              f"{memory} | {result['wall_s']:.1f} | {result['loss_final']:.3f} |")  # fmt: skip

    if args.zero_steps <= 0:
        return
    nproc = args.zero_nproc
    print(f"\n{args.zero_preset} model on {nproc} process(es), seq {args.seq_len}, micro-batch {args.micro}, "
          f"{args.zero_steps} steps")  # fmt: skip
    memory = "peak GPU memory" if torch.cuda.is_available() else "resident memory"
    print(f"| ZeRO | tokens/s (steady) | {memory}, rank 0 (GB) | rank 0's checkpoint shard (GB) "
          "| weights + grads + Adam per process, estimated (GB) | final loss |\n|---|---|---|---|---|---|")  # fmt: skip
    from llmforge.model.estimate import ModelShape, training_memory

    for zero in (0, 2, 3):
        config = settings(args.zero_preset, args.seq_len, args.micro, 1, args.zero_steps, processes=nproc,
                          distributed={"zero": zero, "nproc": nproc}, checkpoint={"every": args.zero_steps // 2})  # fmt: skip
        out = root / f"zero{zero}"
        result = llmforge_run(tokens, out, config)
        # what rank 0 holds of the model and optimizer states, as DeepSpeed writes it (rank 1 writes the rest)
        shard = sum(f.stat().st_size for f in (out / "checkpoints").glob("step-*/*.pt")
                    if "rank_1" not in f.name and "rank1" not in f.name)  # fmt: skip
        hf = json.loads((out / "config.json").read_text())
        states = (
            training_memory(ModelShape.from_hf_config(hf).parameters(), zero, nproc, "fp32")["total"] / 1e9
        )
        print(f"| {zero} | {result['tokens_per_s']:,.0f} | {result['memory_gb']:.2f} | {shard / 1e9:.2f} | "
              f"{states:.2f} | {result['loss_final']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
