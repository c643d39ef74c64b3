"""One large input file is read by several tasks (input.task_mb); the artifact is the same whatever --workers is,
and output shards are bounded (shard_mb)."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import kill_when, llmforge
from warc_factory import article, near_duplicate, prose, write_warc

from llmforge.artifacts import Artifact
from llmforge.data.documents import iter_documents
from llmforge.data.parts import plan_tasks
from llmforge.data.sources import InputSettings
from llmforge.stages import crawl_filter, dedup

ENV = {"OMP_NUM_THREADS": "1"}


def records(count: int, seed: int = 0) -> list[dict]:
    """Documents of 150-250 words that pass crawl-filter's rules; every 23rd has no text (skipped by readers)."""
    return [{"text": "" if n % 23 == 5 else "\n\n".join(prose(seed * 10_000 + n, paragraphs=1 + n % 2,
                                                              sentences_per_paragraph=6)),
             "id": f"doc-{seed}-{n:05d}"} for n in range(count)]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """With blank lines here and there: line numbers (the default ids) count them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for n, row in enumerate(rows):
            handle.write(json.dumps(row) + "\n" + ("\n" if n % 40 == 7 else ""))
    return path


def read_plan(fmt: str, path: Path, task_mb: float, **settings) -> tuple[int, list]:
    plan = plan_tasks([(fmt, [str(path)], InputSettings(**settings))], task_mb)
    (reader,) = plan.readers()
    documents = [doc for task in plan.groups[0].parts for doc in reader.run(rank=task)]
    return plan.tasks, [(doc.id, doc.text, doc.metadata) for doc in documents]


def test_parts_read_exactly_what_a_whole_read_reads(tmp_path):
    rows = [
        {k: v for k, v in row.items() if k != "id"} for row in records(300)
    ]  # ids from line / row numbers
    pages = [article(f"https://news.example/{n}", seed=n) for n in range(40)]
    files = {
        "jsonl": write_jsonl(tmp_path / "a.jsonl", rows),
        "parquet": tmp_path / "a.parquet",
        "warc": write_warc(tmp_path / "a.warc.gz", pages),
        "plain warc": write_warc(tmp_path / "b.warc", pages, gzip=False),
    }
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"], row_group_size=20)
    for kind, path in files.items():
        fmt = kind.split()[-1]
        whole_tasks, whole = read_plan(fmt, path, 0)
        tasks, split = read_plan(fmt, path, path.stat().st_size / 5.5 / 2**20)
        assert (whole_tasks, tasks) == (1, 6), kind
        assert split == whole and len(whole) > 30, kind  # same documents, ids, order
    lines = files["jsonl"].read_text().split("\n")  # a document's default id: its file and line from 0
    last = lines.index(json.dumps(rows[-1]))
    assert last > len(rows) and read_plan("jsonl", files["jsonl"], 0.01)[1][-1][0] == f"a.jsonl/{last}"

    # files that cannot be entered in the middle are read whole, by one task
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(files["jsonl"].read_bytes()))
    one_stream = tmp_path / "c.warc.gz"  # one gzip member for the whole file, not one per record
    one_stream.write_bytes(gzip.compress(files["plain warc"].read_bytes()))
    for fmt, path in (("jsonl", gz), ("warc", one_stream)):
        tasks, documents = read_plan(fmt, path, 0.001)
        assert tasks == 1 and documents == read_plan(fmt, path, 0)[1]


def shard_sizes(artifact: Artifact) -> dict[str, int]:
    """Uncompressed bytes of each data shard before its last document, by name (a task starts a new shard before
    a document when the current one holds shard_mb)."""
    sizes = {}
    for entry in artifact.manifest["files"]:
        if entry["path"].startswith("data/"):
            lines = gzip.decompress((artifact.path / entry["path"]).read_bytes()).splitlines(keepends=True)
            sizes[entry["path"]] = sum(map(len, lines[:-1]))
    return sizes


def same_artifact(a: Artifact, b: Artifact) -> bool:
    return a.fingerprint == b.fingerprint and a.manifest["files"] == b.manifest["files"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_crawl_filter_on_one_large_file_with_any_number_of_workers_and_a_resume(tmp_path):
    jsonl = write_jsonl(tmp_path / "raw" / "big.jsonl", records(150))
    pages = [article(f"https://news.example/{n}", seed=n, paragraphs=12) for n in range(20)]
    warc = write_warc(tmp_path / "raw" / "crawl.warc.gz", pages)
    task_mb = jsonl.stat().st_size / 2.5 / 2**20  # three parts of the JSONL, two of the WARC
    settings = {"url_filter": {"bundled_lists": False}, "executor": {"workers": 1},
                "input": {"task_mb": task_mb}, "shard_mb": 0.03, "removed_sample": 0}  # fmt: skip
    config = crawl_filter.Config.model_validate(settings)
    plan = crawl_filter.plan([("jsonl", [str(jsonl)]), ("warc", [str(warc)])], config)
    assert (plan.tasks, plan.split_files) == (5, 2)
    one = Artifact.open(crawl_filter.run([str(warc), str(jsonl)], tmp_path / "w1", config))
    kept = [d["id"] for d in iter_documents(one)]
    from_jsonl = [i for i in kept if i.startswith("doc-")]
    assert (
        len(from_jsonl) > 60 and from_jsonl == sorted(from_jsonl) == kept[-len(from_jsonl) :]
    )  # input order

    # every task wrote its own shards, each bounded
    sizes = shard_sizes(one)
    assert len({name.split("_")[0].removesuffix(".jsonl.gz") for name in sizes}) == 5
    assert any("_001" in name for name in sizes) and max(sizes.values()) < 0.03 * 2**20

    # the same command, killed after its first task, resumed with two workers: the same artifact, byte for byte
    out = tmp_path / "w2"
    command = ["crawl-filter", warc, jsonl, "-o", out, "--set", "url_filter.bundled_lists=false",
               "--set", f"input.task_mb={task_mb}", "--set", "shard_mb=0.03", "--set", "removed_sample=0"]  # fmt: skip
    marks = tmp_path / "w2.partial" / "logs" / "filter" / "completions"
    kill_when(
        [*command, "--workers", "1"],
        lambda: marks.is_dir() and any(marks.iterdir()),
        tmp_path / "kill.log",
        ENV,
    )
    resumed = llmforge(*command, "--workers", "2", env=ENV)
    assert "resuming crawl-filter filter" in resumed.stderr and "/5 tasks already done" in resumed.stderr
    assert same_artifact(Artifact.open(out), one)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dedup_of_one_large_jsonl_and_parquet_file_does_not_depend_on_workers(tmp_path):
    rows = records(200, seed=1)
    for n in range(0, 200, 10):  # near-duplicates and exact copies far apart in the file, across parts
        rows.append({"text": near_duplicate(rows[n]["text"], 0.02, seed=n) if n % 20 else rows[n]["text"],
                     "id": f"copy-{n}"})  # fmt: skip
    jsonl = write_jsonl(tmp_path / "big.jsonl", rows)
    parquet = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(records(130, seed=2) + rows[:20]), parquet, row_group_size=15,
                   compression="none")  # fmt: skip
    task_mb = jsonl.stat().st_size / 2.5 / 2**20
    artifacts = []
    for workers, mb in ((1, task_mb), (2, task_mb), (1, 0)):
        config = dedup.Config.model_validate({"executor": {"workers": workers}, "input": {"task_mb": mb},
                                              "removed_sample": 0})  # fmt: skip
        artifacts.append(Artifact.open(dedup.run([str(jsonl), str(parquet)], tmp_path / f"w{workers}-{mb}", None,
                                                 config)))  # fmt: skip
    split, two, whole = artifacts
    assert len(shard_sizes(split)) == 6 and len(shard_sizes(whole)) == 2  # 3 JSONL parts, 3 Parquet parts
    assert same_artifact(split, two)
    assert split.stats["removed"] == whole.stats["removed"] >= 30  # copies across parts found as in one task
    assert list(iter_documents(split)) == list(iter_documents(whole))
