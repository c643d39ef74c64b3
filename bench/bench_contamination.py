"""eval's contamination check: the scan it did before (every training document hashed at every eval, one process)
against the n-gram index (evaluation/ngram_index.py) built once (cold, with 1 and N worker processes) and read
(warm), on the same corpus and items, checking that every way gives the same report.

The corpus is the Python standard library's source files (real prose in comments and docstrings, and code) cut
into documents of about 1,000 words, written as a documents artifact of `--shards` shards, repeated up to `--mb`
MB of text. The items: 100 windows of 40 words taken from the corpus (each must be found) and 100 sentences that
are not in it, as a multiple-choice lm-eval task read from local JSONL.

    .venv/bin/python bench/bench_contamination.py [--mb 20] [--shards 8] [--workers 2] [--repeat 3]

Prints one table; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import Imported, sentences  # noqa: E402

from llmforge.artifacts import Artifact, InputRef, canonical_hash, run_stage  # noqa: E402
from llmforge.evaluation import contamination  # noqa: E402


def corpus(megabytes: float) -> list[str]:
    texts, size = [], 0
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    while size < megabytes * 1e6:
        for path in files:
            words = path.read_text(encoding="utf-8", errors="ignore").split()
            for start in range(0, len(words), 1000):
                texts.append(" ".join(words[start : start + 1000]))
                size += len(texts[-1]) + 1
                if size >= megabytes * 1e6:
                    return texts
    return texts


def documents(out: Path, texts: list[str], shards: int) -> Artifact:
    def body(ctx):
        (ctx.work / "data").mkdir()
        for shard in range(shards):
            with gzip.open(ctx.work / "data" / f"{shard:05d}.jsonl.gz", "wt", compresslevel=1) as handle:
                for number in range(shard, len(texts), shards):
                    handle.write(json.dumps({"text": texts[number], "id": f"doc-{number}"}) + "\n")

    ref = InputRef(path="(bench corpus)", kind="raw", fingerprint=canonical_hash([len(texts), shards]))
    return Artifact.open(run_stage("crawl-filter", "documents", Imported(), [ref], out, body))


def model_trained_on(out: Path, docs: Artifact):
    """A model artifact whose lineage reaches `docs` (the check reads only the lineage, not the weights)."""
    path = run_stage("pretrain", "model", Imported(source="bench"), [docs.ref()], out, lambda ctx: None)
    return SimpleNamespace(artifact=Artifact.open(path), base=None)


def task(root: Path, texts: list[str]):
    from llmforge.evaluation.tasks import select_tasks

    rng = random.Random(0)
    items = []
    for _ in range(100):
        words = rng.choice(texts).split()
        start = rng.randrange(max(1, len(words) - 40))
        items.append(" ".join(words[start : start + 40]))
    items += [" ".join(sentences(3, seed=number)) for number in range(100)]
    data = root / "quiz" / "items.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"id": f"q{n}", "question": q, "choices": ["a", "b"], "label": 0}) + "\n"
                            for n, q in enumerate(items)))  # fmt: skip
    (root / "quiz" / "quiz.yaml").write_text(
        f"task: quiz\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: choices\ndoc_to_target: label\n"
    )
    taskset = select_tasks([f"{root / 'quiz'}/"])
    return taskset.leaf_tasks(taskset.load())


def scan_before(source, tasks: dict, n: int = 13) -> dict:
    """The check as it was before the index: every training document hashed and looked up in the items' n-grams,
    at every eval, in one process (the loop the index replaced, kept here as the reference)."""
    import numpy as np

    from llmforge.data.blocks import ngram_hashes
    from llmforge.data.documents import iter_texts

    items = [(name, contamination.item_id(doc, i), contamination.item_text(t, doc))
             for name, t in tasks.items() for i, doc in enumerate(t.eval_docs)]  # fmt: skip
    grams = [np.unique(ngram_hashes(text, n)) for _, _, text in items]
    index = np.concatenate(grams)
    owner = np.concatenate([np.full(len(g), i) for i, g in enumerate(grams)])
    order = np.argsort(index, kind="stable")
    index, owner = index[order], owner[order]
    hit = set()
    for docs in contamination.training_documents(contamination.lineage(source)):
        for text in iter_texts(docs):
            hashes = np.unique(ngram_hashes(text, n))
            left, right = np.searchsorted(index, hashes, "left"), np.searchsorted(index, hashes, "right")
            for a, b in zip(left[right > left], right[right > left], strict=True):
                hit.update(int(i) for i in owner[a:b])
    ids = [items[i][1] for i in sorted(hit)]
    return {"overlapping_ids": ids[: contamination.EXAMPLES], "items_overlapping": len(hit)}


def index_only(docs: Artifact, tasks: dict, repeat: int = 3) -> float:
    """The part of a warm check that depends on the corpus: open the cached index, check its sha256, look the items'
    n-grams up (the rest, hashing the items and rendering them through lm-eval, is the same with or without it)."""
    import numpy as np

    from llmforge.data.blocks import ngram_hashes
    from llmforge.evaluation.ngram_index import contains, training_index

    texts = [contamination.item_text(t, doc) for t in tasks.values() for doc in t.eval_docs]
    grams = np.concatenate([np.unique(ngram_hashes(text, 13)) for text in texts])
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with training_index(contamination.documents_source(docs), 13, False) as index:
            contains(index, grams)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=20, help="MB of training text")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel cold build")
    parser.add_argument("--repeat", type=int, default=3, help="warm checks (best of)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        os.environ["LLMFORGE_CACHE"] = str(root / "cache")
        texts = corpus(args.mb)
        words = sum(len(t.split()) for t in texts)
        docs = documents(root / "docs", texts, args.shards)
        source, tasks = model_trained_on(root / "model", docs), task(root, texts)
        stored = sum(f.stat().st_size for f in (docs.path / "data").iterdir())

        rows, reports = [], {}

        def timed(label: str, run) -> float:
            start = time.perf_counter()
            reports[label] = run()
            seconds = time.perf_counter() - start
            rows.append((label, seconds))
            return seconds

        timed("before: scan every document (1 process)", lambda: scan_before(source, tasks))
        timed("cache off: build in a temporary dir (1 process)",
              lambda: contamination.check(source, tasks, {}, 13, cache=False, workers=1))  # fmt: skip
        timed("cold: build the index and cache it (1 process)",
              lambda: contamination.check(source, tasks, {}, 13, workers=1))  # fmt: skip
        (index_dir,) = [p for p in (root / "cache" / "contamination").iterdir() if p.is_dir()]
        manifest = json.loads((index_dir / "index.json").read_text())
        for path in list((root / "cache" / "contamination").iterdir()):  # the next cold build starts empty
            if path.is_dir():
                os.rename(path, root / "set-aside")
        timed(f"cold: build the index and cache it ({args.workers} processes)",
              lambda: contamination.check(source, tasks, {}, 13, workers=args.workers))  # fmt: skip
        warm = []
        for _ in range(args.repeat):
            warm.append(
                timed("warm: read the cached index", lambda: contamination.check(source, tasks, {}, 13))
            )
        rows = [r for r in rows if r[0] != "warm: read the cached index"] + [("warm: read the cached index (best)",
                                                                                min(warm))]  # fmt: skip
        rows.append(("  of which the index: open, verify sha256, look up", index_only(docs, tasks)))

    reference = reports["before: scan every document (1 process)"]
    same = all(
        {k: r["tasks"]["quiz"][k] for k in reference} == reference
        for label, r in reports.items() if label.startswith(("cache off", "cold", "warm"))
    )  # fmt: skip
    print(f"\ncorpus: {len(texts):,} documents, {words / 1e6:.1f} M words, {args.mb:g} MB of text in "
          f"{args.shards} shards ({stored / 1e6:.1f} MB gzip); 200 items, {reference['items_overlapping']} overlapping")  # fmt: skip
    print(
        f"index: {manifest['ngrams']:,} unique 13-gram hashes, {manifest['ngrams'] * 8 / 1e6:.1f} MB; "
        f"load: {os.getloadavg()[0]:.1f} (1 min)"
    )
    base = rows[0][1]
    print(f"{'what':<52} {'seconds':>8} {'M words/s':>10} {'vs before':>10}")
    for label, seconds in rows:
        print(f"{label:<52} {seconds:>8.2f} {words / seconds / 1e6:>10.3f} {base / seconds:>9.1f}x")
    print(f"same report every way: {same}")


if __name__ == "__main__":
    main()
