"""One large input file, read whole by one task or split by size (input.task_mb) into several: crawl-filter's
wall time with --workers 1 and N, and the check that every run wrote the same documents.

    .venv/bin/python bench/bench_split.py [--mb 3] [--task-mb 0.5] [--workers 2] [--stage crawl-filter|dedup]
                                          [--repeat 2]

Prints one table with the ratios; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from warc_factory import near_duplicate, prose  # noqa: E402

from llmforge.artifacts import Artifact  # noqa: E402
from llmforge.data.documents import iter_documents  # noqa: E402
from llmforge.stages import crawl_filter, dedup  # noqa: E402


def make_jsonl(path: Path, megabytes: float) -> int:
    """English prose documents (one in ten a near-copy of an earlier one) until the file holds `megabytes`."""
    count = 0
    with open(path, "w") as handle:
        while handle.tell() < megabytes * 2**20:
            text = "\n\n".join(prose(count, paragraphs=2 + count % 3))
            if count % 10 == 9:
                text = near_duplicate(
                    "\n\n".join(prose(count - 9, paragraphs=2 + (count - 9) % 3)), 0.01, count
                )
            handle.write(json.dumps({"text": text, "id": f"doc-{count:07d}"}) + "\n")
            count += 1
    return count


def _spin(barrier=None, times=None) -> float:
    if barrier is not None:
        barrier.wait()  # every process started: the loops overlap
    start = time.perf_counter()
    sum(i * i for i in range(10_000_000))
    seconds = time.perf_counter() - start
    if times is not None:
        times.put(seconds)
    return seconds


def headroom(workers: int) -> float:
    """How much faster `workers` CPU-bound processes get through `workers` loops than one process does, right now:
    the best speed-up any run here can show (about `workers` on an idle machine, 1 when the cores are taken)."""
    import multiprocessing

    alone = _spin()
    context = multiprocessing.get_context("spawn")
    barrier, times = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_spin, args=(barrier, times)) for _ in range(workers)]
    for process in processes:
        process.start()
    together = max(times.get() for _ in processes)
    for process in processes:
        process.join()
    return workers * alone / together


def balanced(artifact: Artifact, workers: int) -> float:
    """The speed-up the run's tasks allow on `workers` idle cores: their busy time (datatrove's per-task block
    times) over the longest a worker would be busy, longest task first, step after step."""
    total = makespan = 0.0
    for step in sorted(artifact.path.glob("logs/*/stats")):
        busy = sorted((sum(block.get("time_stats", {}).get("total", 0) for block in json.loads(f.read_text()))
                       for f in step.glob("*.json")), reverse=True)  # fmt: skip
        loads = [0.0] * workers
        for seconds in busy:
            loads[loads.index(min(loads))] += seconds
        total, makespan = total + sum(busy), makespan + max(loads)
    return total / makespan


def run(stage: str, jsonl: Path, out: Path, task_mb: float, workers: int) -> tuple[float, Artifact]:
    shutil.rmtree(out, ignore_errors=True)
    settings = {"executor": {"workers": workers}, "input": {"task_mb": task_mb}, "removed_sample": 0}
    start = time.perf_counter()
    if stage == "crawl-filter":
        settings["url_filter"] = {"bundled_lists": False}
        path = crawl_filter.run([str(jsonl)], out, crawl_filter.Config.model_validate(settings))
    else:
        path = dedup.run([str(jsonl)], out, None, dedup.Config.model_validate(settings))
    return time.perf_counter() - start, Artifact.open(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=3, help="size of the one input file")
    parser.add_argument("--task-mb", type=float, default=0.5, help="input.task_mb of the split runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stage", choices=("crawl-filter", "dedup"), default="crawl-filter")
    parser.add_argument(
        "--repeat", type=int, default=2, help="rounds, interleaved; the best time of each run counts"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-split-"))
    try:
        jsonl = root / "big.jsonl"
        count = make_jsonl(jsonl, args.mb)
        runs = {
            "one task, 1 worker (task_mb 0)": (0, 1),
            f"one task, {args.workers} workers (task_mb 0)": (0, args.workers),
            f"split, 1 worker (task_mb {args.task_mb:g})": (args.task_mb, 1),
            f"split, {args.workers} workers (task_mb {args.task_mb:g})": (args.task_mb, args.workers),
        }
        room = [headroom(args.workers)]
        results: dict[str, tuple[float, Artifact]] = {}
        for _ in range(args.repeat):
            for number, (name, (task_mb, workers)) in enumerate(runs.items()):
                seconds, artifact = run(args.stage, jsonl, root / f"out{number}", task_mb, workers)
                results[name] = (min(seconds, results.get(name, (seconds,))[0]), artifact)
                print(f"{name}: {seconds:.1f} s", file=sys.stderr)
            room.append(headroom(args.workers))
        documents = [list(iter_documents(artifact)) for _, artifact in results.values()]
        split = [artifact for name, (_, artifact) in results.items() if name.startswith("split")]
        base = next(iter(results.values()))[0]
        print(
            f"\n{args.stage} on one {args.mb:g} MB JSONL file ({count:,} documents), {args.workers} workers max"
        )
        print(
            f"| run | tasks | s | speed-up | tasks' busy time over {args.workers} idle cores |\n|---|---|---|---|---|"
        )
        for name, (seconds, artifact) in results.items():
            tasks = len(list(artifact.path.glob("logs/filter/stats/*.json")))
            print(
                f"| {name} | {tasks} | {seconds:.1f} | {base / seconds:.2f}x | {balanced(artifact, args.workers):.2f}x |"
            )
        same_documents = all(d == documents[0] for d in documents)
        same_artifact = split[0].manifest["files"] == split[1].manifest["files"]
        print(f"\nsame documents in every run: {same_documents}; split runs byte-identical: {same_artifact}")
        print(
            f"machine headroom ({args.workers} busy-loop processes vs one, measured before and after each round): "
            + ", ".join(f"{r:.2f}x" for r in room)
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
