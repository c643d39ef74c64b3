"""crawl-filter then dedup as a user runs them: subprocesses on WARC files, a kill -9 midway, a resume, lineage,
no-op re-runs, a refused change, and bad input."""

import json

import pytest
from helpers import kill_when, llmforge, write_jsonl
from warc_factory import CITY_FILTER_SETTINGS, article, city_crawl_pages, near_duplicate, prose, write_warc

from llmforge.artifacts import Artifact, raw_input
from llmforge.data.documents import iter_documents

FILES = 8
SETTINGS = CITY_FILTER_SETTINGS
QUESTION = "Which river flows through the old town before it reaches the harbour near the northern bridge?"


def crawl(root):
    """8 WARC files of 6 pages: articles (one German), spam, a blocked domain; the first two files also hold
    a page mirrored from file 0, a near-copy of it, and a page quoting a benchmark question."""
    files = []
    for number in range(FILES):
        pages = city_crawl_pages(number)
        if number == 1:
            pages.append(
                article("https://www.citynews.com/quiz", seed=99, extra=f"Quiz of the week: {QUESTION}")
            )
        files.append(write_warc(root / f"CC-MAIN-{number:05d}.warc.gz", pages))
    return files


@pytest.mark.slow
def test_crawl_filter_then_dedup(tmp_path):
    files = crawl(tmp_path / "crawl")
    (tmp_path / "filter.yaml").write_text(SETTINGS)
    docs = tmp_path / "docs"
    command = ["crawl-filter", str(tmp_path / "crawl" / "*.warc.gz"), "-o", docs, "--config", tmp_path / "filter.yaml",
               "--workers", "2"]  # fmt: skip

    # kill -9 the whole process group once some tasks are done
    completions = tmp_path / "docs.partial" / "logs" / "filter" / "completions"
    kill_when(
        command, lambda: completions.is_dir() and len(list(completions.iterdir())) >= 2, tmp_path / "kill.log"
    )
    done_before = len(list(completions.iterdir()))
    assert 2 <= done_before < FILES and not (docs / "artifact.json").exists()

    resumed = llmforge(*command)
    assert resumed.stdout == f"{docs}\n"
    assert "resuming the interrupted run" in resumed.stderr
    assert f"resuming crawl-filter filter: {done_before}/{FILES} tasks already done" in resumed.stderr
    # datatrove's own logs stay in the task logs, even with a pool of workers (its merged stats included)
    assert "SUCCESS" not in resumed.stderr and "Stats" not in resumed.stderr
    filtered = Artifact.open(docs)
    urls = [d["metadata"]["url"] for d in iter_documents(filtered)]
    expected = [f"https://www.citynews.com/{n}/{i}" for n in range(FILES) for i in range(4)]
    expected += ["https://mirror.citynews.net/0/0", "https://copy.citynews.org/0/0", "https://www.stadtzeitung.de/1",
                 "https://www.citynews.com/quiz"]  # fmt: skip
    assert sorted(urls) == sorted(
        expected
    )  # each page once: the killed tasks were redone, the finished ones kept
    filters = filtered.stats["filters"]
    assert filters["url_filter"]["removed"] == FILES and filters["gopher_repetition"]["removed"] == FILES
    assert filtered.stats["input"] == {
        "files": FILES,
        "records": FILES + 2 * (6 * FILES + 4),
        "documents": 6 * FILES + 4,
    }
    assert [e["fingerprint"] for e in filtered.manifest["inputs"]] == [
        raw_input(str(tmp_path / "crawl" / "*.warc.gz")).fingerprint
    ]
    assert filtered.manifest["config"]["executor"]["workers"] == 2 and filtered.verify() == []
    # no time in the gzip headers: the same fingerprint writes the same bytes
    assert all((docs / f["path"]).read_bytes()[4:8] == bytes(4) for f in filtered.manifest["files"])

    # dedup with decontamination, on the crawl-filter artifact
    benchmark = write_jsonl(
        tmp_path / "quiz.jsonl", [{"id": "river", "question": QUESTION, "answer": "The Silver"}]
    )
    dedup = ["dedup", docs, "-o", tmp_path / "dedup", "--decontaminate", benchmark, "--workers", "1"]
    result = llmforge(*dedup)
    assert result.stdout == f"{tmp_path / 'dedup'}\n"
    assert "0.924 <- target" in result.stderr and "1 of 1 items" in result.stderr
    deduped = Artifact.open(tmp_path / "dedup")
    kept = [d["metadata"]["url"] for d in iter_documents(deduped)]
    assert len(kept) == len(expected) - 3 and "https://www.citynews.com/quiz" not in kept
    assert sum(u in kept for u in ("https://www.citynews.com/0/0", "https://mirror.citynews.net/0/0",
                                   "https://copy.citynews.org/0/0")) == 1  # fmt: skip
    assert deduped.stats["exact"]["removed"] == 1 and deduped.stats["minhash"]["removed"] == 1
    assert deduped.extra["decontamination"]["benchmarks"][0]["items_hit"] == ["river"]

    # lineage: dedup -> crawl-filter -> the raw WARC files (and the benchmark)
    parents = [(entry["kind"], parent.stage if parent else None) for entry, parent in deduped.parents()]
    assert parents == [("documents", "crawl-filter"), ("raw", None)]
    tree = llmforge("lineage", tmp_path / "dedup").stderr
    assert (
        "crawl-filter" in tree and "*.warc.gz" in tree and f"{FILES} files" in tree and "quiz.jsonl" in tree
    )

    # the same commands again do nothing; a changed setting is refused and named
    again = llmforge(*dedup)
    assert again.stdout == f"{tmp_path / 'dedup'}\n" and "up to date" in again.stderr
    assert Artifact.open(tmp_path / "dedup").fingerprint == deduped.fingerprint
    assert "up to date" in llmforge(*command, "--workers", "1").stderr  # workers do not change the output
    refused = llmforge(*dedup, "--shingle", "4", check=False)
    assert (
        refused.returncode == 2
        and "config.minhash.ngram: 5 -> 4" in refused.stderr
        and "--force" in refused.stderr
    )
    assert (
        json.loads((tmp_path / "dedup" / "artifact.json").read_text())["fingerprint"] == deduped.fingerprint
    )

    # bad input: one line, exit 2, nothing that looks finished
    truncated = tmp_path / "bad" / "cut.warc.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(files[0].read_bytes()[:-200])
    bad = llmforge("crawl-filter", truncated, "-o", tmp_path / "bad-out", check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"error: {truncated} (record 13): truncated WARC record (https://www.spam-domain.com/0)"
    ]
    assert not (tmp_path / "bad-out").exists() and not (tmp_path / "bad-out.partial").exists()


@pytest.mark.slow
def test_dedup_killed_midway_resumes_to_the_same_result(tmp_path):
    """kill -9 during MinHash's bucket step (the fourth of six datatrove steps): the same command keeps the finished
    tasks of every step and ends with what an uninterrupted run makes."""
    corpus = tmp_path / "corpus"
    for number in range(4):
        records = []
        for i in range(30):
            text = "\n\n".join(prose(1000 + 30 * number + i))
            records.append({"text": text, "id": f"doc-{number}-{i}"})
            if i % 5 == 0:
                records.append({"text": near_duplicate(text, 0.01, seed=i), "id": f"near-{number}-{i}"})
            if i % 7 == 0:
                records.append({"text": text, "id": f"copy-{number}-{i}"})
        write_jsonl(corpus / f"part-{number}.jsonl", records)
    llmforge("dedup", corpus, "-o", tmp_path / "reference", "--workers", "1")
    reference = Artifact.open(tmp_path / "reference")

    out = tmp_path / "dedup"
    command = ["dedup", corpus, "-o", out, "--workers", "1"]
    buckets = tmp_path / "dedup.partial" / "logs" / "minhash-buckets" / "completions"
    kill_when(command, lambda: buckets.is_dir() and len(list(buckets.iterdir())) >= 3, tmp_path / "kill.log")
    done = len(list(buckets.iterdir()))
    assert 3 <= done < 14 and not (out / "artifact.json").exists()

    resumed = llmforge(*command)
    assert resumed.stdout == f"{out}\n"
    for step, tasks in (("exact-signatures", "4/4"), ("exact-duplicates", "1/1"), ("minhash-signatures", "4/4"),
                        ("minhash-buckets", f"{done}/14")):  # fmt: skip
        assert f"resuming dedup {step}: {tasks} tasks already done" in resumed.stderr
    deduped = Artifact.open(out)
    assert deduped.fingerprint == reference.fingerprint and deduped.stats == reference.stats
    assert sorted(d["id"] for d in iter_documents(deduped)) == sorted(
        d["id"] for d in iter_documents(reference)
    )
    assert deduped.stats["exact"]["removed"] == 20 and deduped.stats["minhash"]["removed"] > 0
    assert not (out / "checkpoints").exists() and deduped.verify() == []
