"""Does the quality filter help? The same tiny model pretrained for the same number of tokens on a "web" corpus as
it is and on what `llmforge quality filter` keeps of it, compared by loss on held-out high-quality text.

The text is real text found on this machine (bench/bench_quality.py's `collect`): positives are explanatory
paragraphs (package documentation, docstrings, Python's reference topics), negatives licences, changelogs, word
salad and keyword spam. Files are split three ways, whole, so no file lends paragraphs to two of them:
- classifier: positives against negatives, for `llmforge quality train`;
- web: a crawl-like mix, `--web-quality` positives (25% by default) and the rest negatives;
- held out: positives only, never trained on; the measure.
Everything runs through the CLI: dedup (the web corpus as a documents artifact), quality train, quality filter
(`--keep` = the web's positive share), tokenize train (once, on the unfiltered web, so both models share the
tokenizer), tokenize encode of each corpus, pretrain of each with the same settings and token budget. Loss is the
mean next-token cross-entropy over windows of the held-out text (and of the unfiltered web's validation split, the
cost of the filter on the other text).

    .venv/bin/python bench/bench_quality_filter.py [--steps 200] [--work /tmp/bench-quality-filter]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import collect  # noqa: E402

SEQ_LEN = 128


def bucket(source: str) -> int:
    """0-9 by file: 0-1 held out, 2-5 the classifier, 6-9 the web."""
    return int(hashlib.md5(source.split(":", 1)[-1].encode()).hexdigest(), 16) % 10


def write(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    return path


def cli(*args) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "llmforge", *map(str, args)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"llmforge {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def loss_on(model_dir: Path, texts: list[str], max_tokens: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmforge.model.perplexity import perplexity, windows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    return math.log(perplexity(model, windows(ids, SEQ_LEN, max_tokens), batch_size=8))


def val_texts(tokens_dir: Path, limit: int) -> list[str]:
    """The validation documents of a tokens artifact, decoded (the web's own held-out split)."""
    from transformers import AutoTokenizer

    from llmforge.data.shards import TokenShards

    shards = TokenShards(tokens_dir)
    tokenizer = AutoTokenizer.from_pretrained(shards.tokenizer_path)
    texts = []
    for shard in shards.shards("val"):
        start = 0
        for end in shard.ends:
            texts.append(tokenizer.decode(shard.tokens[start : int(end) - 1]))  # without its EOS
            start = int(end)
    return texts[:limit]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per model")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="tokens per optimizer step")
    parser.add_argument(
        "--web-quality", type=float, default=0.25, help="share of positives in the web corpus"
    )
    parser.add_argument("--web-documents", type=int, default=4000)
    parser.add_argument("--eval-tokens", type=int, default=100_000, help="held-out tokens scored per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of both models' weights and data order")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-quality-filter"))
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    positives, negatives = collect()
    split = {name: ([], []) for name in ("held", "classifier", "web")}
    for side, items in ((0, positives), (1, negatives)):
        for source, text in items:
            b = bucket(source)
            split["held" if b < 2 else "classifier" if b < 6 else "web"][side].append(text)
    web_positive = int(args.web_documents * args.web_quality)
    web = split["web"][0][:web_positive] + split["web"][1][: args.web_documents - web_positive]
    held = split["held"][0]
    print(f"documents: classifier {len(split['classifier'][0])} positive / {len(split['classifier'][1])} negative; "
          f"web {len(web)} ({min(web_positive, len(split['web'][0]))} positive); held-out positives {len(held)}",
          file=sys.stderr)  # fmt: skip
    import random

    random.Random(0).shuffle(web)
    files = {
        "positives": write(work / "in" / "positives.jsonl", split["classifier"][0]),
        "negatives": write(work / "in" / "negatives.jsonl", split["classifier"][1]),
        "web": write(work / "in" / "web.jsonl", web),
    }
    runs = work / "runs"
    seconds = {}
    seconds["dedup"] = cli("dedup", files["web"], "-o", runs / "web", "--workers", "1")
    seconds["quality train"] = cli("quality", "train", files["positives"], "--negative", files["negatives"], "-o",
                                   runs / "classifier")  # fmt: skip
    seconds["quality filter"] = cli("quality", "filter", runs / "web", "--classifier", runs / "classifier", "-o",
                                    runs / "filtered", "--keep", args.web_quality, "--workers", "1")  # fmt: skip
    seconds["tokenize train"] = cli(
        "tokenize", "train", runs / "web", "-o", runs / "tokenizer", "--vocab-size", 4096
    )
    train_tokens = args.steps * args.batch_tokens
    results = {}
    for name, documents in (("unfiltered", runs / "web"), ("filtered", runs / "filtered")):
        seconds[f"encode {name}"] = cli("tokenize", "encode", documents, "--tokenizer", runs / "tokenizer", "-o",
                                        runs / f"tokens-{name}", "--val-fraction", 0.05)  # fmt: skip
        seconds[f"pretrain {name}"] = cli(
            "pretrain", runs / f"tokens-{name}", "-o", runs / f"model-{name}-{args.seed}", "--preset", "tiny", "--seq-len",
            SEQ_LEN, "--batch-tokens", args.batch_tokens, "--micro-batch-size", 16, "--train-tokens", train_tokens,
            "--lr", 0.002, "--set", "checkpoint.every=0", "--set", "eval.every=0", "--set", f"seed={args.seed}", "--update",
        )  # fmt: skip
        results[name] = json.loads((runs / f"tokens-{name}" / "artifact.json").read_text())["stats"]
    kept = json.loads((runs / "filtered" / "artifact.json").read_text())["stats"]
    heldout = json.loads((runs / "classifier" / "artifact.json").read_text())["stats"]["heldout"]
    web_val = val_texts(runs / "tokens-unfiltered", 400)
    rows = []
    for name in ("unfiltered", "filtered"):
        model = runs / f"model-{name}-{args.seed}"
        rows.append((name, results[name]["tokens"], train_tokens / results[name]["tokens"],
                     loss_on(model, held, args.eval_tokens), loss_on(model, web_val, args.eval_tokens)))  # fmt: skip
    print(f"\nclassifier held out: precision {heldout['precision']}, recall {heldout['recall']}, ROC AUC "
          f"{heldout['roc_auc']}; filter kept {kept['documents']} of {kept['input']['documents']} web documents "
          f"(keep {args.web_quality})")  # fmt: skip
    print(
        f"tiny Llama, {args.steps} steps x {args.batch_tokens} tokens (seq {SEQ_LEN}), seed {args.seed}, same tokenizer and settings\n"
    )
    print("| data | train tokens | passes | loss, held-out high-quality text | loss, unfiltered web (val) |")
    print("|---|---:|---:|---:|---:|")
    for name, tokens, passes, high, web_loss in rows:
        print(f"| {name} | {tokens:,} | {passes:.1f} | {high:.3f} | {web_loss:.3f} |")
    print(f"\nheld-out high-quality loss, filtered - unfiltered: {rows[1][3] - rows[0][3]:+.3f} nats/token")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
