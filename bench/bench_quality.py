"""Quality classifier learners on the same documents: llmforge's (scikit-learn: hashed word n-grams, tf-idf,
logistic regression) against fastText, whichever fastText build the environment holds.

The documents are real text found on this machine. Positives: explanatory paragraphs (installed packages' .md/.rst
docs, the standard library's docstrings, Python's reference topics). Negatives: licence paragraphs, changelog
chunks, word salad (a quarter of the positives' paragraphs shuffled word by word: the same words, no sentences;
only word-order features see it) and keyword spam. One file in five is held out, whole, so no file has paragraphs
on both sides. fastText runs with several seeds and thread counts and counts its "Encountered NaN" failures.

    .venv/bin/python bench/bench_quality.py [--per-side 2500] [--seeds 5]

Prints one table; the figures go to bench/RESULTS.md. To measure another fastText build, run it with a Python
whose environment holds that build instead (one `fasttext` module per environment).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import random
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from llmforge.data import quality

SPAM = ("buy now", "best price", "free shipping", "click here", "limited offer", "order today", "casino bonus",
        "win big", "subscribe", "sign up", "home", "about us", "contact", "privacy policy", "terms of use",
        "accept all cookies", "login", "register", "share on facebook", "read more", "related posts",
        "all rights reserved", "top 10", "you won't believe", "hot deals")  # fmt: skip


def paragraphs(text: str):
    for paragraph in re.split(r"\n\s*\n", text):
        words = paragraph.split()
        if 40 <= len(words) <= 400 and sum(w.isalpha() for w in words) / len(words) > 0.7:
            yield " ".join(words)


def collect() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(source, text) positives and negatives."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    positives, licences, changelogs = [], [], []
    # every site-packages folder on the path: a venv that adds another's through a .pth file reads the same text
    for root in sorted({Path(p) for p in sys.path if p.endswith("site-packages")}) + [stdlib]:
        for path in sorted(root.rglob("*")):
            name = path.name.lower()
            if not path.is_file() or path.stat().st_size > 2_000_000:
                continue
            if name.startswith(("license", "licence", "copying", "notice")):
                kind = licences
            elif name.startswith(("changelog", "changes", "history")):
                kind = changelogs
            elif path.suffix in (".md", ".rst"):
                kind = positives
            else:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if kind is changelogs:
                lines = [line.strip() for line in text.splitlines() if line.strip()]
                changelogs += [
                    (str(path), " ".join(lines[i : i + 12])) for i in range(0, len(lines) - 12, 12)
                ]
            else:
                kind += [(str(path), p) for p in paragraphs(text)]
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in str(path) or "site-packages" in str(path):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and ast.get_docstring(node):
                positives += [(str(path), p) for p in paragraphs(ast.get_docstring(node))]
    import pydoc_data.topics

    positives += [
        (f"topic:{key}", p) for key, text in pydoc_data.topics.topics.items() for p in paragraphs(text)
    ]
    rng = random.Random(0)
    rng.shuffle(positives)
    salad_sources, positives = positives[: len(positives) // 4], positives[len(positives) // 4 :]
    salad = []
    for source, text in salad_sources:
        words = text.split()
        rng.shuffle(words)
        salad.append((f"salad:{source}", " ".join(words)))
    spam = []
    for number in range(3000):
        words = [rng.choice(SPAM) for _ in range(rng.randint(10, 60))] + rng.sample(
            rng.choice(positives)[1].split(), 8
        )
        rng.shuffle(words)
        spam.append((f"spam:{number % 50}", " ".join(words)))
    negatives = licences + changelogs + salad + spam
    rng.shuffle(negatives)
    return positives, negatives


def held_out(source: str) -> bool:
    return int(hashlib.md5(source.split(":", 1)[-1].encode()).hexdigest(), 16) % 5 == 0


def measure(name: str, scores: np.ndarray, labels: np.ndarray, train_s: float, score_rate: float) -> str:
    report = quality.heldout_report(scores[labels == 1], scores[labels == 0])
    return (f"| {name} | {report['roc_auc']:.4f} | {report['accuracy']:.3f} | {report['precision']:.3f} | "
            f"{report['recall']:.3f} | {train_s:.1f} s | {score_rate:,.0f} docs/s |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-side", type=int, default=2500, help="documents per side at most")
    parser.add_argument("--seeds", type=int, default=5, help="fastText runs per setting and thread count")
    args = parser.parse_args()

    positives, negatives = collect()
    n = min(args.per_side, len(positives), len(negatives))
    data = [(1, s, t) for s, t in positives[:n]] + [(0, s, t) for s, t in negatives[:n]]
    train = [(label, text) for label, source, text in data if not held_out(source)]
    test = [(label, text) for label, source, text in data if held_out(source)]
    test_texts, test_labels = [t for _, t in test], np.array([label for label, _ in test])
    print(f"documents: {len(train):,} train, {len(test):,} held out ({int(test_labels.sum()):,} positive)")
    print("| learner | ROC AUC | accuracy | precision | recall | train | scoring (batches) |")
    print("|---|---|---|---|---|---|---|")

    settings = quality.TrainSettings()
    start = time.perf_counter()
    classifier = quality.fit(
        [t for label, t in train if label], [t for label, t in train if not label], settings
    )
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = np.concatenate(
        [classifier.score(test_texts[i : i + 256]) for i in range(0, len(test_texts), 256)]
    )
    rate = len(test_texts) / (time.perf_counter() - start)
    print(measure("llmforge: hashed 1-2-grams, tf-idf, logistic regression (SGD)", scores, test_labels, train_s,
                  rate), flush=True)  # fmt: skip

    import fasttext

    build = fasttext_build(fasttext)
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        train_file = Path(folder) / "train.txt"
        train_file.write_text("".join(f"__label__{'hq' if label else 'lq'} {quality.fasttext_line(t)}\n"
                                      for label, t in train))  # fmt: skip
        for setting in ({"wordNgrams": 1}, {"wordNgrams": 2}, {"wordNgrams": 2, "lr": 0.5, "epoch": 10}):
            tried = failed = 0
            for thread in (1, 2):
                for seed in range(args.seeds):
                    tried += 1
                    start = time.perf_counter()
                    try:
                        model = fasttext.train_supervised(str(train_file), thread=thread, seed=seed, verbose=0,
                                                          **setting)  # fmt: skip
                    except RuntimeError:
                        failed += 1
                        continue
                    train_s = time.perf_counter() - start
                    if tried - failed > 1:  # figures from the first run that trained; the rest count failures
                        continue
                    start = time.perf_counter()
                    labels, probabilities = model.predict(
                        [quality.fasttext_line(t) for t in test_texts], k=-1
                    )
                    rate = len(test_texts) / (time.perf_counter() - start)
                    scores = np.array([dict(zip(ls, ps, strict=True)).get("__label__hq", 0.0)
                                       for ls, ps in zip(labels, probabilities, strict=True)])  # fmt: skip
                    label = ", ".join(f"{k}={v}" for k, v in setting.items()) + f", {thread} thread(s)"
                    print(
                        measure(f"fastText ({build}) {label}", scores, test_labels, train_s, rate), flush=True
                    )
            failures.append(f"{setting}: {failed}/{tried} runs failed with 'Encountered NaN'")
    print(f"\nfastText: {build}; {args.seeds} seeds x threads 1 and 2:")
    print("\n".join(failures))


def fasttext_build(module) -> str:
    """The distribution whose files the imported `fasttext` module is (several builds install that module)."""
    folder = Path(module.__file__).parent.parent
    names = [d.name.split("-")[0] for d in folder.glob("fasttext*.dist-info")]
    return ", ".join(f"{n.replace('_', '-')} {importlib.metadata.version(n)}" for n in names) or "fasttext"


if __name__ == "__main__":
    sys.exit(main())
