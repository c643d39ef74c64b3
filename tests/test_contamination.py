"""eval's training n-gram index (llmforge/evaluation/ngram_index.py): what it holds, how it is keyed, that a damaged
or half-written one is never trusted, that concurrent builders leave one whole index, and that eval's contamination
report is the same with the cache cold, warm or off.

Every index here is built from real documents artifacts and JSONL files by the real n-gram hashing dedup uses; the
reference is the plain scan the check did before the cache: the n-grams of every training text, in one set.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import Imported, documents_artifact, sentences

from llmforge.artifacts import Artifact, InputRef, canonical_hash, run_stage
from llmforge.data.blocks import ngram_hashes
from llmforge.evaluation import ngram_index
from llmforge.evaluation.contamination import documents_source
from llmforge.evaluation.ngram_index import HASHES, MANIFEST, Source, contains, training_index
from llmforge.files import publish_directory


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Each test its own cache directory."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LLMFORGE_CACHE", str(root))
    return root / "contamination"


def sharded_documents(out: Path, texts: list[str], shards: int) -> Path:
    """A documents artifact whose texts are spread over several shards (as dedup with several tasks writes)."""

    def body(ctx):
        (ctx.work / "data").mkdir()
        for shard in range(shards):
            with gzip.open(ctx.work / "data" / f"{shard:05d}.jsonl.gz", "wt") as handle:
                for number in range(shard, len(texts), shards):
                    handle.write(json.dumps({"text": texts[number], "id": f"doc-{number}"}) + "\n")

    ref = InputRef(path="(test texts)", kind="raw", fingerprint=canonical_hash([texts, shards]))
    return run_stage("crawl-filter", "documents", Imported(), [ref], out, body)


def scan(texts: list[str], n: int = 13, keep_numbers: bool = False) -> np.ndarray:
    """The reference: every n-gram of every text, as the check computed it before there was an index."""
    grams = [ngram_hashes(text, n, keep_numbers=keep_numbers) for text in texts]
    return np.unique(np.concatenate(grams)) if grams else np.zeros(0, dtype=np.uint64)


def index_of(artifact: Path, n: int = 13, keep_numbers: bool = False, **kwargs) -> np.ndarray:
    with training_index(documents_source(Artifact.open(artifact)), n, keep_numbers, **kwargs) as index:
        return np.array(index)


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


TEXTS = sentences(300, seed=3)


def test_index_holds_every_training_ngram_once(tmp_path, cache, capsys):
    docs = documents_artifact(tmp_path / "docs", TEXTS)
    expected = scan(TEXTS)
    assert len(expected) > 100
    cold = index_of(docs)
    assert "building the n-gram index of" in capsys.readouterr().err
    np.testing.assert_array_equal(cold, expected)
    (built,) = entries(cache)  # one index, no staging or run files left
    assert sorted(p.name for p in (cache / built).iterdir()) == [HASHES, MANIFEST]
    manifest = json.loads((cache / built / MANIFEST).read_text())
    assert manifest["documents"] == len(TEXTS) and manifest["ngrams"] == len(expected)
    assert manifest["source"] == str(docs) and manifest["key"]["ngram"] == 13

    warm = index_of(docs)
    err = capsys.readouterr().err
    assert "building" not in err and "cached in" in err
    np.testing.assert_array_equal(warm, expected)
    # off: built in a temporary directory, the same n-grams, nothing added to the cache
    np.testing.assert_array_equal(index_of(docs, cache=False), expected)
    assert entries(cache) == [built]


def test_contains_is_membership():
    index = np.array([3, 10, 2**63 + 5, 2**64 - 1], dtype=np.uint64)
    values = np.array([2**64 - 1, 0, 10, 11, 3, 2**63 + 5, 2**63], dtype=np.uint64)
    assert contains(index, values).tolist() == [True, False, True, False, True, True, False]
    assert contains(np.zeros(0, dtype=np.uint64), values).tolist() == [False] * len(values)


def test_the_key_follows_content_and_ngram_settings(tmp_path, cache):
    docs = documents_artifact(tmp_path / "docs", TEXTS)
    index_of(docs)
    assert len(entries(cache)) == 1
    # a copy of the same artifact elsewhere (same shards, same sha256): the same index
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(docs, copy)
    index_of(copy)
    assert len(entries(cache)) == 1
    # other n, other number handling, other documents: each its own index, each right
    np.testing.assert_array_equal(index_of(docs, n=5), scan(TEXTS, 5))
    np.testing.assert_array_equal(index_of(docs, keep_numbers=True), scan(TEXTS, keep_numbers=True))
    assert not np.array_equal(scan(TEXTS, keep_numbers=True), scan(TEXTS))  # the texts have numbers
    other = documents_artifact(tmp_path / "other", TEXTS[:-1] + ["A brand new closing document " * 5])
    np.testing.assert_array_equal(index_of(other), scan(TEXTS[:-1] + ["A brand new closing document " * 5]))
    assert len(entries(cache)) == 4


def test_raw_training_files_are_indexed_by_their_fingerprint(tmp_path):
    from llmforge.artifacts import raw_input

    records = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": u}]}
               for t, u in zip(TEXTS[:50], TEXTS[50:100], strict=True)]  # fmt: skip
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    fingerprint = raw_input(str(data), [str(data)]).fingerprint
    source = Source(str(data), "records", (str(data),), {"raw": fingerprint})
    with training_index(source, 13, False) as index:
        # the role names are not text; the user and assistant contents are, one per line
        np.testing.assert_array_equal(index, scan([f"{t}\n{u}" for t, u in zip(TEXTS[:50], TEXTS[50:100],
                                                                             strict=True)]))  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage manifest", "no manifest", "other key"])
def test_a_damaged_index_is_rebuilt_not_trusted(tmp_path, cache, capsys, damage):
    docs = documents_artifact(tmp_path / "docs", TEXTS)
    expected = index_of(docs)
    (built,) = entries(cache)
    hashes, manifest = cache / built / HASHES, cache / built / MANIFEST
    if damage == "truncated":
        hashes.write_bytes(hashes.read_bytes()[:-8])
    elif damage == "flipped":  # same size, one hash changed: only the sha256 sees it
        data = bytearray(hashes.read_bytes())
        data[40] ^= 0xFF
        hashes.write_bytes(bytes(data))
    elif damage == "garbage manifest":
        manifest.write_text('{"key": ')
    elif damage == "no manifest":
        manifest.unlink()
    else:
        record = json.loads(manifest.read_text())
        record["key"]["ngram"] = 5
        manifest.write_text(json.dumps(record))
    capsys.readouterr()
    np.testing.assert_array_equal(index_of(docs), expected)
    err = " ".join(capsys.readouterr().err.split())
    assert f"{cache / built}: " in err and "not trusted, rebuilding it" in err
    assert entries(cache) == [built]  # rebuilt in place, the damaged one gone
    assert ngram_index.load(cache / built, json.loads(manifest.read_text())["key"])[0] is not None


def test_a_build_that_died_is_cleaned_up_and_redone(tmp_path, cache):
    docs = documents_artifact(tmp_path / "docs", TEXTS)
    source = documents_source(Artifact.open(docs))
    digest = canonical_hash(ngram_index.index_key(source, 13, False))
    # what a killed build leaves: a staging directory with runs and part of the hashes, no manifest
    stale = cache / f"{digest}.building-99999"
    (stale / "runs").mkdir(parents=True)
    (stale / HASHES).write_bytes(b"\0" * 16)
    np.testing.assert_array_equal(index_of(docs), scan(TEXTS))
    assert entries(cache) == [digest]


def test_a_build_losing_the_race_keeps_the_published_index(tmp_path, cache):
    """Where the lock does not hold (a filesystem without flock), two builders both publish: the first stays."""
    docs = documents_artifact(tmp_path / "docs", TEXTS)
    expected = index_of(docs)
    (built,) = entries(cache)
    before = (cache / built / MANIFEST).read_text()
    late = cache / f"{built}.building-1"
    late.mkdir()
    (late / HASHES).write_bytes(b"")
    publish_directory(late, cache / built)
    assert entries(cache) == [built] and (cache / built / MANIFEST).read_text() == before
    np.testing.assert_array_equal(index_of(docs), expected)


def build_in_another_process(artifact: str, cache_dir: str, result: str) -> None:
    os.environ["LLMFORGE_CACHE"] = cache_dir
    with training_index(documents_source(Artifact.open(artifact)), 13, False, workers=1) as index:
        np.save(result, np.array(index))


def test_concurrent_evals_build_one_whole_index(tmp_path, cache):
    texts = sentences(3000, seed=5)
    docs = documents_artifact(tmp_path / "docs", texts)
    context = multiprocessing.get_context("spawn")
    results = [tmp_path / f"result-{i}.npy" for i in range(3)]
    processes = [context.Process(target=build_in_another_process, args=(str(docs), str(cache.parent), str(r)))
                 for r in results]  # fmt: skip
    for process in processes:
        process.start()
    for process in processes:
        process.join(300)
        assert process.exitcode == 0
    expected = scan(texts)
    for result in results:
        np.testing.assert_array_equal(np.load(result), expected)
    (built,) = entries(cache)  # one index; no staging, runs or discarded copies
    assert json.loads((cache / built / MANIFEST).read_text())["ngrams"] == len(expected)


def test_worker_processes_spilled_runs_and_merge_passes_give_the_same_index(tmp_path, monkeypatch):
    """A large corpus in miniature: shards read by worker processes, runs spilled every few hundred n-grams and
    merged in several passes with small read blocks; the index is the plain scan's."""
    texts = sentences(600, seed=7)
    docs = sharded_documents(tmp_path / "docs", texts, shards=4)
    expected = scan(texts)
    monkeypatch.setattr(ngram_index, "POOL_MIN_BYTES", 0)
    np.testing.assert_array_equal(index_of(docs, workers=2), expected)
    monkeypatch.setattr(ngram_index, "RUN_HASHES", 200)  # in this process: the path without workers
    monkeypatch.setattr(ngram_index, "FAN_IN", 3)
    monkeypatch.setattr(ngram_index, "MERGE_BYTES", 8 * 50)
    np.testing.assert_array_equal(index_of(docs, workers=1, cache=False), expected)


def test_a_bad_document_is_named_and_leaves_no_partial_index(tmp_path, cache):
    from llmforge.errors import InputError

    docs = documents_artifact(tmp_path / "docs", TEXTS[:5])
    source = documents_source(Artifact.open(docs))
    shard = Path(source.files[0])
    with gzip.open(shard, "wt") as handle:
        handle.write('{"text": "fine"}\n{"text": 3}\n')
    bad = Source(source.name, "documents", source.files, {"documents": "edited"})
    with pytest.raises(InputError, match=rf"{shard}:2: a document needs a string 'text' field"):
        with training_index(bad, 13, False):
            pass
    assert entries(cache) == []  # the staging directory went with the failed build
