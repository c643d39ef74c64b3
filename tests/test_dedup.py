"""dedup on planted corpora: exact copies, near-duplicates of known Jaccard similarity, contaminated documents."""

import gzip
import json

import pytest
from helpers import documents_artifact, stats_mismatches, write_jsonl
from warc_factory import near_duplicate, prose

from llmforge.artifacts import Artifact
from llmforge.config import fingerprinted
from llmforge.data.documents import iter_documents
from llmforge.errors import InputError
from llmforge.stages import dedup

BENCHMARK = [
    {"id": "geo-1", "question": "Which river flows through the old town before it reaches the harbour near the "
     "northern bridge?", "answer": "The narrow river that the farmers call the silver road"},
    {"id": "geo-2", "question": "What did the council build next to the museum after the great storm of the last "
     "winter?", "answer": "A wooden bridge"},
    {"id": "geo-3", "question": "Who painted the famous orchestra in the quiet theatre?", "answer": "The curious "
     "painter from the village on the island who studied the forest for many long years"},
    {"id": "geo-4", "question": "How many students visited the library on the first day of the spring festival "
     "in the city?", "answer": "Three hundred"},
]  # fmt: skip


def shingles(text: str) -> set:
    """The 5-word shingles datatrove's MinHash hashes, to know each planted pair's true Jaccard similarity."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    return set(MinhashDedupSignature("/tmp", None).get_shingles(text).ravel().tolist())


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """60 distinct documents; 20 planted near-duplicates at Jaccard >= 0.8, 10 related pages at < 0.5, 5 exact
    copies, and 4 pages quoting the benchmark: a whole question; the end of a question and its answer (neither
    13 words long alone); a long answer; 12 words of a question (kept)."""
    root = tmp_path_factory.mktemp("dedup")
    base = {f"doc-{i}": "\n\n".join(prose(100 + i)) for i in range(60)}
    records = dict(base)
    near, far = {}, {}
    for i in range(20):
        copy = near_duplicate(base[f"doc-{i}"], edits=0.005 + 0.0007 * i, seed=i)
        near[f"near-{i}"] = (f"doc-{i}", jaccard(base[f"doc-{i}"], copy))
        records[f"near-{i}"] = copy
    for i in range(20, 30):
        copy = near_duplicate(base[f"doc-{i}"], edits=0.12, seed=i)
        far[f"far-{i}"] = (f"doc-{i}", jaccard(base[f"doc-{i}"], copy))
        records[f"far-{i}"] = copy
    for i in range(30, 35):
        records[f"copy-{i}"] = base[f"doc-{i}"]
    quote = BENCHMARK
    quiz_text = ["\n\n".join(prose(900 + i)) for i in range(4)]
    records["quiz-question"] = f"{quiz_text[0]}\n\nQuiz: {quote[0]['question']}"
    records["quiz-answer-span"] = (
        f"{quiz_text[1]}\n\nIt was near the museum after the great storm of the last winter? {quote[1]['answer']}."
    )
    records["quiz-answer"] = f"{quiz_text[2]}\n\nIt was {quote[2]['answer'].lower()}."
    records["quiz-twelve-words"] = f"{quiz_text[3]}\n\nHow many students visited the library on the first day of the"  # fmt: skip
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": t, "id": i} for i, t in records.items()])
    benchmark = write_jsonl(root / "quiz.jsonl", BENCHMARK)
    out = dedup.run([str(corpus)], root / "dedup", [str(benchmark)], dedup.Config(executor={"workers": 1}))
    return Artifact.open(out), records, near, far


def test_near_duplicates_at_the_default_threshold(planted):
    artifact, records, near, far = planted
    assert min(j for _, j in near.values()) >= 0.8 and max(j for _, j in far.values()) < 0.5
    kept = {d["id"] for d in iter_documents(artifact)}
    removed_near = {i for i in records if i not in kept and not i.startswith(("copy-", "quiz-"))}
    caught = [
        pair for pair, (original, _) in near.items() if (pair in removed_near) != (original in removed_near)
    ]
    false = [i for i in removed_near if not (i in near or (i.startswith("doc-") and f"near-{i[4:]}" in near))]
    recall, precision = len(caught) / len(near), 1 - len(false) / max(len(removed_near), 1)
    assert (precision, recall) == (1.0, 1.0)  # 14x8 LSH compares pairs at J >= 0.8 with probability >= 0.92
    assert all(f"far-{i}" in kept and f"doc-{i}" in kept for i in range(20, 30))
    minhash = artifact.stats["minhash"]
    assert (minhash["removed"], minhash["clusters"]) == (20, 20)
    assert (minhash["buckets"], minhash["hashes_per_bucket"]) == (14, 8)  # derived from 0.8: FineWeb's shape
    assert minhash["p_candidate_at_threshold"] == pytest.approx(0.9235, abs=1e-4)


def test_exact_copies_are_removed_first(planted):
    artifact, records, _, _ = planted
    kept = {d["id"] for d in iter_documents(artifact)}
    assert all(f"doc-{i}" in kept and f"copy-{i}" not in kept for i in range(30, 35))
    stats = artifact.stats
    assert stats["exact"] == {"in": len(records) - 3, "out": len(records) - 8, "removed": 5}
    assert stats["input"]["documents"] == len(records)
    assert stats["documents"] == len(records) - 3 - 5 - 20 and stats["removed"] == 28
    removed_exact = [json.loads(line)["id"] for line in _lines(artifact, "exact")]
    assert sorted(removed_exact) == [f"copy-{i}" for i in range(30, 35)]


def test_contaminated_documents_are_dropped_and_reported(planted):
    artifact, _, _, _ = planted
    kept = {d["id"] for d in iter_documents(artifact)}
    assert {"quiz-question", "quiz-answer-span", "quiz-answer"}.isdisjoint(
        kept
    ) and "quiz-twelve-words" in kept
    report = artifact.extra["decontamination"]
    assert report["ngram"] == 13 and report["documents_removed"] == 3
    (benchmark,) = report["benchmarks"]
    assert benchmark["items"] == 4 and benchmark["items_hit"] == ["geo-1", "geo-2", "geo-3"]
    assert benchmark["path"].endswith("quiz.jsonl") and len(benchmark["sha256"]) == 64
    assert artifact.stats["decontamination"] == {
        "in": 99,
        "out": 96,
        "removed": 3,
        "items_hit": 3,
        "items_too_short": 0,
    }
    removed = {
        json.loads(line)["id"]: json.loads(line)["metadata"] for line in _lines(artifact, "decontamination")
    }
    assert removed["quiz-answer-span"]["contaminated_items"] == [1]
    roles = [entry.get("role") for entry in artifact.manifest["inputs"]]
    assert roles == [None, "benchmark"]  # the benchmark file is part of the lineage and the fingerprint


def _lines(artifact, name):
    import gzip

    for file in sorted((artifact.path / "removed" / name).glob("*.jsonl.gz")):
        yield from gzip.open(file, "rt")


def test_documents_artifacts_and_parquet_corpora_together(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["\n\n".join(prose(500 + i)) for i in range(4)]
    crawled = documents_artifact(tmp_path / "crawled", texts[:3])
    pq.write_table(pa.table({"content": [texts[0], texts[3]], "id": ["p0", "p1"]}), tmp_path / "more.parquet")
    config = dedup.Config.model_validate({"minhash": {"enabled": False}, "input": {"text_field": "content"}})
    artifact = Artifact.open(
        dedup.run([str(crawled), str(tmp_path / "more.parquet")], tmp_path / "out", config=config)
    )
    assert sorted(d["text"] for d in iter_documents(artifact)) == sorted(
        texts
    )  # one copy of texts[0] is gone
    assert [(e["kind"], e.get("stage")) for e in artifact.manifest["inputs"]] == [
        ("documents", "crawl-filter"),
        ("raw", None),
    ]
    assert artifact.stats["exact"]["removed"] == 1 and "minhash" not in artifact.stats
    assert artifact.extra["decontamination"] == {"ngram": 13, "benchmarks": [], "documents_removed": 0}


def test_short_arithmetic_items_with_numbers_kept(tmp_path, capsys):
    """Arithmetic items are 4 words once punctuation goes, and datatrove folds numbers to 0: only 4-grams with the
    numbers kept tell "What is 6 + 7?" from "What is 2 + 3?"."""
    page = "\n\n".join(prose(700))
    texts = {
        "leak": f"{page}\n\nWhat is 6 + 7? The interpreter prints 13.",
        "other": f"{page} What is 2 + 3? Five.",
    }
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t, "id": i} for i, t in texts.items()])
    items = write_jsonl(tmp_path / "arith.jsonl", [{"id": "add-6-7", "question": "What is 6 + 7?", "answer": "13"},
                                                   {"id": "sum", "question": "Sum?", "answer": "13"}])  # fmt: skip
    settings = {"minhash": {"enabled": False}, "exact": False, "executor": {"workers": 1},
                "decontamination": {"ngram": 4, "fields": ["question"]}}  # fmt: skip
    folded = Artifact.open(
        dedup.run([str(corpus)], tmp_path / "folded", [str(items)], dedup.Config.model_validate(settings))
    )
    assert folded.stats["decontamination"]["removed"] == 2  # "what is 0 0" is in both pages
    # the one-word item can never be found, and the user is told so, not only the manifest
    assert folded.stats["decontamination"]["items_too_short"] == 1
    warning = " ".join(capsys.readouterr().err.split())
    assert f"warning: 1 of 2 items of {items} have fewer than 4 words and cannot be matched" in warning
    settings["decontamination"]["keep_numbers"] = True
    kept = Artifact.open(
        dedup.run([str(corpus)], tmp_path / "kept", [str(items)], dedup.Config.model_validate(settings))
    )
    assert [d["id"] for d in iter_documents(kept)] == ["other"]


BOILERPLATE = ("We use cookies to improve your experience on this website and to show you relevant content. "
               "By continuing to browse the site you agree to our use of cookies and our privacy policy. "
               "Subscribe to our newsletter to receive the latest stories from our editors every week. "
               "All rights reserved by the publisher and its partners in every country of the world.")  # fmt: skip


def test_sentence_spans_repeated_across_pages_are_removed_after_their_first(tmp_path):
    """--sentence-dedup: a four-sentence footer on twenty pages stays on the first and is cut from the others; a
    page that is little more than the footer is dropped once cut (under 50 words); pages are otherwise kept."""
    records = [{"id": f"page-{i}", "text": "\n\n".join(prose(300 + i, paragraphs=2)) + "\n\n" + BOILERPLATE}
               for i in range(20)]  # fmt: skip
    records.append(
        {"id": "stub", "text": "A short notice about the closing hours of the shop. " + BOILERPLATE}
    )
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    config = dedup.Config(sentences={"enabled": True}, minhash={"enabled": False}, executor={"workers": 1})
    out = dedup.run([str(corpus)], tmp_path / "dedup", config=config)
    kept = {d["id"]: d["text"] for d in iter_documents(Artifact.open(out))}
    assert sorted(kept) == sorted(f"page-{i}" for i in range(20))
    with_footer = [
        name for name, text in kept.items() if "We use cookies" in text or "All rights reserved" in text
    ]
    assert with_footer == ["page-0"] and kept["page-0"] == records[0]["text"]
    for i in range(1, 20):
        assert kept[f"page-{i}"].strip() == "\n\n".join(prose(300 + i, paragraphs=2)).strip()
    stats = Artifact.open(out).stats
    counts = {"in": 21, "out": 20, "removed": 1, "sentences": 271, "sentences_removed": 80}
    assert stats["sentences"] == counts and stats_mismatches(out) == []
    from llmforge.card import make_card

    card = " ".join(make_card(out).split())
    assert (
        "| sentences | 21 | 20 | 1 | spans of 3 sentences seen in an earlier document cut (80 of 271" in card
    )
    assert list((out / "removed" / "sentences").rglob("*.jsonl*"))  # the cut pages as they were


def test_bad_inputs(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one document"}])
    bad = write_jsonl(tmp_path / "bench.jsonl", [{"question": "q", "answer": "a"}, "not json"])
    with pytest.raises(InputError, match=rf"^{bad}:2: not valid JSON"):
        dedup.run([str(corpus)], tmp_path / "out", [str(bad)])
    with pytest.raises(InputError, match="no such file"):
        dedup.run([str(corpus)], tmp_path / "out", [str(tmp_path / "missing.jsonl")])
    cut = tmp_path / "bench.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"question": "q", "answer": "a"}\n' * 100)[:-30])
    with pytest.raises(InputError, match=rf"^{cut}: corrupt or truncated"):
        dedup.run([str(corpus)], tmp_path / "out", [str(cut)])
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(InputError, match=f"^--decontaminate {empty}: holds no benchmark items"):
        dedup.run([str(corpus)], tmp_path / "out", [str(empty)])
    with pytest.raises(InputError, match="has nothing to do"):
        dedup.run(
            [str(corpus)], tmp_path / "out", config=dedup.Config(exact=False, minhash={"enabled": False})
        )
    (tmp_path / "a.warc").write_bytes(b"")
    with pytest.raises(InputError, match="run `llmforge crawl-filter` on WARC files first"):
        dedup.run([str(tmp_path / "a.warc")], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_candidate_probability_curve():
    assert dedup.candidate_probability(0.8, 14, 8) == pytest.approx(1 - (1 - 0.8**8) ** 14)
    assert dedup.candidate_probability(0.5, 14, 8) < 0.06 < 0.99 < dedup.candidate_probability(0.9, 14, 8)


def test_bands_and_rows_follow_the_threshold():
    """Unset, bands x rows are the most rows within 112 hashes that still catch 90% of pairs at the target."""
    shapes = {t: dedup.MinhashSettings(threshold=t).lsh() for t in (0.5, 0.7, 0.8, 0.9)}
    assert shapes == {0.5: (37, 3), 0.7: (22, 5), 0.8: (14, 8), 0.9: (8, 13)}
    # one row more (with the bands the budget then allows) falls under 90%: at 0.8, 12x9 catches 82%
    assert dedup.candidate_probability(0.8, 14, 8) >= 0.9 > dedup.candidate_probability(0.8, 12, 9)
    assert dedup.candidate_probability(0.7, 22, 5) >= 0.9 > dedup.candidate_probability(0.7, 18, 6)
    assert dedup.candidate_probability(0.9, 8, 13) >= 0.9 > dedup.candidate_probability(0.9, 8, 14)
    # given values win; one given alone: rows -> as many bands as the budget holds, bands -> the most rows that
    # still catch 90%
    assert dedup.MinhashSettings(threshold=0.5, buckets=14, hashes_per_bucket=8).lsh() == (14, 8)
    assert dedup.MinhashSettings(threshold=0.5, hashes_per_bucket=10).lsh() == (11, 10)
    assert dedup.MinhashSettings(threshold=0.8, buckets=20).lsh() == (20, 5)
    assert dedup.MinhashSettings(threshold=0.8, buckets=4).lsh() == (4, 3)
    assert dedup.MinhashSettings(threshold=0.01).lsh() == (112, 1)  # nothing catches 90%: the most sensitive
    # the target now decides what is removed, so it is part of the fingerprint
    assert fingerprinted(dedup.Config(minhash={"threshold": 0.7})) != fingerprinted(dedup.Config())


def test_a_lower_threshold_removes_moderately_similar_pairs(tmp_path):
    """Pairs at Jaccard 0.5-0.65 are kept at the default 0.8 (14x8 compares them with probability <= 0.37) and
    removed at 0.5 (37x3: >= 0.993); unrelated documents stay either way."""
    records, similarity = {}, []
    for i in range(4):
        base = "\n\n".join(prose(300 + i))
        records[f"doc-{i}"], records[f"near-{i}"] = base, near_duplicate(base, edits=0.06, seed=i)
        records[f"other-{i}"] = "\n\n".join(prose(400 + i))
        similarity.append(jaccard(base, records[f"near-{i}"]))
    assert 0.5 <= min(similarity) and max(similarity) <= 0.65
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t, "id": i} for i, t in records.items()])
    removed, shapes = {}, {}
    for threshold in (0.8, 0.5):
        config = dedup.Config.model_validate(
            {"exact": False, "minhash": {"threshold": threshold}, "executor": {"workers": 1}}
        )
        artifact = Artifact.open(dedup.run([str(corpus)], tmp_path / f"t{threshold}", config=config))
        removed[threshold] = sorted(set(records) - {d["id"] for d in iter_documents(artifact)})
        minhash = artifact.stats["minhash"]
        shapes[threshold] = (minhash["buckets"], minhash["hashes_per_bucket"])
    assert removed == {0.8: [], 0.5: [f"near-{i}" for i in range(4)]}
    assert shapes == {0.8: (14, 8), 0.5: (37, 3)}


def test_minhash_settings_reach_every_datatrove_step(tmp_path):
    """Shingle size, bands x rows and seed are datatrove's MinhashConfig in the signature, bucket and cluster
    steps alike (a mismatch between steps would silently find nothing); one bucket task per band."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one document"}])
    config = dedup.Config.model_validate(
        {"minhash": {"ngram": 3, "buckets": 20, "hashes_per_bucket": 5, "seed": 7}}
    )
    steps = {step.name: step for step in dedup.build_steps(dedup.Corpus([str(corpus)], config.input), config,
                                                            tmp_path, None)}  # fmt: skip
    assert list(steps) == ["exact-signatures", "exact-duplicates", "minhash-signatures", "minhash-buckets",
                           "minhash-clusters", "filter"]  # fmt: skip
    assert steps["minhash-buckets"].tasks == 20
    for name in ("minhash-signatures", "minhash-buckets", "minhash-clusters"):
        minhash = steps[name].build()[-1].config
        assert (minhash.n_grams, minhash.num_buckets, minhash.hashes_per_bucket, minhash.seed) == (
            3,
            20,
            5,
            7,
        )


def test_the_same_fingerprint_writes_the_same_bytes(tmp_path):
    """gzip stamps the time of writing in each file's header; the documents writer stamps 0, so two runs of one
    fingerprint (or a run and its resume) write identical files."""
    texts = ["\n\n".join(prose(300 + i)) for i in range(12)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in texts + texts[:3]])
    first, second = (Artifact.open(dedup.run([str(corpus)], tmp_path / name)) for name in ("a", "b"))
    assert first.fingerprint == second.fingerprint and first.manifest["files"] == second.manifest["files"]
    shards = [first.path / f["path"] for f in first.manifest["files"]]
    assert {s.parent.name for s in shards} == {"data", "exact"}  # the documents and the removed sample
    assert all(s.read_bytes()[4:8] == bytes(4) for s in shards)  # the gzip header's mtime field
