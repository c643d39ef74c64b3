"""crawl-filter on crawls the tests write themselves: which pages survive, what is redacted, what each filter removed."""

import gzip
import json
import os
import re
import shutil

import pytest
from warc_factory import (
    article,
    code_page,
    image,
    list_page,
    prose,
    short_page,
    spam_page,
    write_warc,
)

from llmforge.artifacts import Artifact
from llmforge.data.documents import iter_documents
from llmforge.errors import InputError
from llmforge.stages import crawl_filter

PII = ("Write to jane.doe@mail-example.org or call +1 (555) 123-4567 before noon. The server at 8.8.8.8 logged the "
       "card 4111 1111 1111 1111 and the private host 192.168.1.20 answered.")  # fmt: skip
KEPT = [
    "https://www.citynews.com/council",
    "https://www.citynews.com/harbour",
    "https://www.citynews.com/museum",
    "https://www.citynews.com/contact",  # kept, with its PII redacted
    "https://www.stadtzeitung.de/rat",  # German is wanted too
    "https://mirror.citynews.net/council",  # an exact copy: dedup's job, not crawl-filter's
]
REMOVED = {
    "https://www.journal-ville.fr/conseil": "language",
    "https://www.diario-ciudad.es/consejo": "language",
    "https://www.spam-domain.com/offers": "url_filter",
    "https://cheap-watches.com/": "gopher_repetition",
    "https://www.citynews.com/login": "gopher_quality",
    "https://dev.citynews.com/snippet": "c4_quality",
    "https://www.citynews.com/list": "fineweb_quality",
}


def crawl_pages():
    return [
        article(KEPT[0], seed=1),
        article(KEPT[1], seed=2),
        article(KEPT[2], seed=3),
        article(KEPT[3], seed=4, extra=PII),
        article(KEPT[4], seed=5, language="de"),
        article(KEPT[5], seed=1),
        article("https://www.journal-ville.fr/conseil", seed=6, language="fr"),
        article("https://www.diario-ciudad.es/consejo", seed=7, language="es"),
        article("https://www.spam-domain.com/offers", seed=8),
        spam_page("https://cheap-watches.com/"),
        short_page("https://www.citynews.com/login"),
        code_page("https://dev.citynews.com/snippet", seed=9),
        list_page("https://www.citynews.com/list", seed=10),
        image("https://www.citynews.com/logo.png"),
    ]


def small_config(**overrides) -> crawl_filter.Config:
    """Defaults, except the bundled 4.5M-domain blocklist (10 s to load; tested once in test_data_blocks)."""
    settings = {"url_filter": {"bundled_lists": False, "extra_domains": ["spam-domain.com"]},
                "language": {"languages": ["en", "de"]}, "executor": {"workers": 1}}  # fmt: skip
    for key, value in overrides.items():
        settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
    return crawl_filter.Config.model_validate(settings)


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    root = tmp_path_factory.mktemp("crawl")
    warc = write_warc(root / "crawl" / "CC-MAIN-0001.warc.gz", crawl_pages())
    out = crawl_filter.run([str(warc)], root / "docs", small_config())
    return Artifact.open(out)


def by_url(artifact):
    return {d["metadata"]["url"]: d for d in iter_documents(artifact)}


def test_exactly_the_good_pages_survive(filtered):
    documents = by_url(filtered)
    assert sorted(documents) == sorted(KEPT)
    assert {u: d["metadata"]["language"] for u, d in documents.items()} == {
        **{u: "en" for u in KEPT}, KEPT[4]: "de"}  # fmt: skip
    # Trafilatura kept the article, not the navigation, cookie banner, sidebar or footer
    council = documents[KEPT[0]]["text"]
    assert prose(1)[0] in council and prose(1)[-1] in council
    for boilerplate in ("Sign in", "cookies", "Most read", "All rights reserved", "Privacy policy"):
        assert boilerplate not in council


def test_pii_is_redacted(filtered):
    text = by_url(filtered)[KEPT[3]]["text"]
    assert ("Write to <EMAIL> or call <PHONE_NUMBER> before noon. The server at <IP_ADDRESS> logged the card "
            "<CREDIT_CARD> and the private host 192.168.1.20 answered.") in text  # fmt: skip
    assert filtered.stats["pii_redacted"] == {
        "documents": 1,
        "email": 1,
        "phone": 1,
        "ip": 1,
        "credit_card": 1,
    }


def test_every_removed_page_is_counted_and_sampled(filtered):
    stats = filtered.stats
    assert stats["input"] == {
        "files": 1,
        "records": 29,
        "documents": 13,
    }  # warcinfo + 14 requests + 14 responses
    filters = stats["filters"]
    assert list(filters) == ["extract", "url_filter", "language", "gopher_repetition", "gopher_quality",
                             "c4_quality", "fineweb_quality"]  # fmt: skip
    expected_removed = {name: 0 for name in filters}
    for reason in REMOVED.values():
        expected_removed[reason] += 1
    assert {name: row["removed"] for name, row in filters.items()} == expected_removed
    for before, after in zip(list(filters.values()), list(filters.values())[1:], strict=False):
        assert before["out"] == after["in"]
    assert stats["documents"] == len(KEPT) and stats["removed"] == 13 - len(KEPT)
    assert filters["language"]["reasons"] == {"language_fr": 1, "language_es": 1}
    assert filters["url_filter"]["reasons"] == {"domain": 1}
    assert filters["c4_quality"]["reasons"] == {"curly_bracket": 1}
    assert filters["fineweb_quality"]["reasons"] == {"short_line_ratio": 1}
    # the removed documents themselves, per filter, with datatrove's reason
    sampled = {}
    for file in (filtered.path / "removed").rglob("*.jsonl.gz"):
        for line in gzip.open(file, "rt"):
            document = json.loads(line)
            sampled[document["metadata"]["url"]] = (
                file.parent.name,
                document["metadata"].get("filter_reason"),
            )
    assert {url: name for url, (name, _) in sampled.items()} == REMOVED
    assert sampled["https://cheap-watches.com/"][1] == "dup_line_frac"


def test_the_manifest_records_lineage_and_files(filtered):
    (entry,) = filtered.manifest["inputs"]
    assert entry["kind"] == "raw" and entry["files"] == 1 and entry["path"].endswith("CC-MAIN-0001.warc.gz")
    assert filtered.verify() == []
    assert {f["path"].split("/")[0] for f in filtered.manifest["files"]} == {"data", "removed"}
    assert not (filtered.path / "checkpoints").exists()
    assert not list(
        filtered.path.glob("logs/*/task-locks")
    )  # each step's task locks go once its tasks are done


def test_jsonl_parquet_text_folders_globs_and_urls(tmp_path):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["\n\n".join(prose(seed)) for seed in range(20, 26)]
    raw = tmp_path / "raw"
    raw.mkdir()
    with gzip.open(raw / "a.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"body": texts[0], "id": "j0", "url": "https://blog.citynews.com/0"}) + "\n")
        handle.write(json.dumps({"body": texts[1], "id": "j1"}) + "\n")
    pq.write_table(pa.table({"body": [texts[2]], "id": ["p0"]}), raw / "b.parquet")
    (raw / "notes").mkdir()
    (raw / "notes" / "c.txt").write_text(texts[3])
    (raw / "notes" / "d.txt").write_text(texts[4])
    memory = fsspec.filesystem("memory")
    memory.pipe("/bucket/e.jsonl", (json.dumps({"body": texts[5], "id": "m0"}) + "\n").encode())
    out = crawl_filter.run([str(raw / "*.jsonl.gz"), str(raw / "b.parquet"), str(raw / "notes"), "memory://bucket/*.jsonl"],
                           tmp_path / "docs", small_config(input={"text_field": "body"}))  # fmt: skip
    artifact = Artifact.open(out)
    documents = {d["id"]: d for d in iter_documents(artifact)}
    assert sorted(documents) == sorted(
        ["j0", "j1", "p0", str(raw / "notes" / "c.txt"), str(raw / "notes" / "d.txt"), "m0"]
    )
    assert documents["j0"]["metadata"]["url"] == "https://blog.citynews.com/0"
    assert [entry["files"] for entry in artifact.manifest["inputs"]] == [
        1,
        1,
        2,
        1,
    ]  # one lineage entry per argument
    assert artifact.stats["input"]["remote_files"] == 1 and artifact.stats["input"]["records"] == 5


def test_corpora_compressed_as_they_are_shipped(tmp_path):
    """C4 and Dolma ship JSON lines as .json.gz, The Pile and SlimPajama as .jsonl.zst (pzstd writes several
    frames), and text files come compressed too: each is read as its .jsonl / .txt would be, in any task layout."""
    import zstandard

    texts = ["\n\n".join(prose(seed)) for seed in range(30, 36)]
    lines = "".join(json.dumps({"text": text, "id": f"d{n}"}) + "\n" for n, text in enumerate(texts)).encode()
    half = lines.index(b"\n", len(lines) // 2) + 1
    zstd = zstandard.ZstdCompressor()
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "plain.jsonl").write_bytes(lines)
    (raw / "c4.json.gz").write_bytes(gzip.compress(lines))
    (raw / "pile.jsonl.zst").write_bytes(zstd.compress(lines[:half]) + zstd.compress(lines[half:]))
    (raw / "notes.txt.zst").write_bytes(zstd.compress(texts[0].encode()))
    runs = {}
    for name in ("plain.jsonl", "c4.json.gz", "pile.jsonl.zst"):
        out = crawl_filter.run([str(raw / name)], tmp_path / name, small_config(input={"task_mb": 0.001}))
        runs[name] = [(d["id"], d["text"]) for d in iter_documents(Artifact.open(out))]
    assert runs["plain.jsonl"] and runs["c4.json.gz"] == runs["pile.jsonl.zst"] == runs["plain.jsonl"]
    out = crawl_filter.run([str(raw / "notes.txt.zst")], tmp_path / "notes", small_config())
    assert [d["text"] for d in iter_documents(Artifact.open(out))] == [runs["plain.jsonl"][0][1]]


def test_pii_drop_removes_the_document(tmp_path):
    warc = write_warc(
        tmp_path / "c.warc", [article(KEPT[0], seed=1), article(KEPT[3], seed=4, extra=PII)], gzip=False
    )
    artifact = Artifact.open(
        crawl_filter.run([str(warc)], tmp_path / "docs", small_config(pii={"mode": "drop"}))
    )
    assert list(by_url(artifact)) == [KEPT[0]]
    assert artifact.stats["filters"]["pii"]["reasons"] == {
        "contains_credit_card_and_email_and_ip_and_phone": 1
    }
    (removed,) = (artifact.path / "removed" / "pii").glob("*.jsonl.gz")
    assert json.loads(gzip.open(removed, "rt").readline())["metadata"]["url"] == KEPT[3]


def test_a_user_supplied_fasttext_model_through_the_stage(tmp_path):
    """--lid-model: datatrove's LanguageFilter on the user's file, checked up front and part of the lineage."""
    from test_data_blocks import write_fasttext_model

    words = {"en": ["the", "every", "this", "that", "our", "their", "and"], "de": ["der", "die", "das", "ein", "und"],
             "fr": ["le", "la", "un", "une", "chaque", "notre", "leur", "et", "a"]}  # fmt: skip
    write_fasttext_model(tmp_path / "lid.bin", words)
    pages = [article(KEPT[0], seed=1), article(KEPT[4], seed=5, language="de"),
             article("https://www.journal-ville.fr/conseil", seed=6, language="fr")]  # fmt: skip
    warc = write_warc(tmp_path / "c.warc.gz", pages)
    config = small_config(language={"languages": ["en", "de"], "fasttext_model": str(tmp_path / "lid.bin")})
    artifact = Artifact.open(crawl_filter.run([str(warc)], tmp_path / "docs", config))
    assert {u: d["metadata"]["language"] for u, d in by_url(artifact).items()} == {
        KEPT[0]: "en",
        KEPT[4]: "de",
    }
    assert artifact.stats["filters"]["language"] == {"in": 3, "out": 2, "removed": 1}
    model_entry = artifact.manifest["inputs"][-1]
    assert model_entry["role"] == "language-id model" and model_entry["path"] == str(tmp_path / "lid.bin")

    (tmp_path / "notes.bin").write_bytes(b"not a model")
    for name, problem in (("missing.bin", "no such file"), ("notes.bin", "not a fastText model file")):
        config = small_config(language={"fasttext_model": str(tmp_path / name)})
        with pytest.raises(InputError, match=f"^--lid-model {tmp_path / name}: {problem}"):
            crawl_filter.run([str(warc)], tmp_path / "out", config)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_pages_over_the_extraction_timeout_are_counted_and_reported(tmp_path, capsys):
    warc = write_warc(tmp_path / "c.warc.gz", [article(KEPT[0], seed=1), article(KEPT[1], seed=2)])
    config = small_config(extract={"timeout": 1e-6})  # no page can be extracted in a microsecond
    artifact = Artifact.open(crawl_filter.run([str(warc)], tmp_path / "docs", config))
    assert artifact.stats["filters"]["extract"] == {
        "in": 2,
        "out": 0,
        "removed": 2,
        "reasons": {"timeout": 2},
    }
    console = " ".join(capsys.readouterr().err.split())
    assert (
        "warning: 2 pages took longer than extract.timeout (1e-06 s) in Trafilatura and were dropped"
        in console
    )


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the record, before any work; nothing is created


def bad_input(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        crawl_filter.run([str(path)], tmp_path / "out", small_config())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("compressed", [True, False])
def test_truncated_warc(tmp_path, compressed):
    warc = write_warc(
        tmp_path / "full.warc", [article(KEPT[0], seed=1), article(KEPT[1], seed=2)], gzip=compressed
    )
    data = warc.read_bytes()
    message = bad_input(tmp_path, "cut.warc.gz" if compressed else "cut.warc", data[: len(data) - 300])
    assert message.startswith(f"{tmp_path / ('cut.warc.gz' if compressed else 'cut.warc')} (record 5)")
    assert "truncated WARC" in message


def test_files_that_are_not_what_their_name_says(tmp_path):
    """datatrove's reader decompresses by the name and warcio reads any other text as an old ARC header: both
    would pass a lenient check and then fail inside a worker with a traceback."""
    plain = write_warc(tmp_path / "plain.warc", [article(KEPT[0], seed=1)], gzip=False).read_bytes()
    message = bad_input(tmp_path, "named.warc.gz", plain)
    assert message == f"{tmp_path / 'named.warc.gz'}: named .gz but not gzip-compressed; rename it (.warc) or compress it"  # fmt: skip
    message = bad_input(tmp_path, "notes.warc", b"these are my notes, not a crawl\n")
    assert message.startswith(
        f"{tmp_path / 'notes.warc'} (record 1): not a WARC record (warcio reads it as ARC"
    )


def test_bad_jsonl(tmp_path):
    good = json.dumps({"text": "fine"})
    message = bad_input(tmp_path, "x.jsonl", f"{good}\n{good}\n{{not json\n".encode())
    assert message.startswith(f"{tmp_path / 'x.jsonl'}:3: not valid JSON")
    message = bad_input(tmp_path, "y.jsonl", f'{good}\n{{"content": "no text field", "id": 1}}\n'.encode())
    assert message == f"{tmp_path / 'y.jsonl'}:2: no 'text' field (fields: content, id); set --text-field"
    message = bad_input(tmp_path, "z.jsonl.gz", gzip.compress(f"{good}\n".encode() * 50)[:-20])
    assert message.startswith(f"{tmp_path / 'z.jsonl.gz'}: truncated compressed file")
    # zstandard's own reader stops quietly where a cut file ends: the lines before the cut would pass as the corpus
    import zstandard

    message = bad_input(
        tmp_path, "z.jsonl.zst", zstandard.ZstdCompressor().compress(f"{good}\n".encode() * 500)[:-20]
    )
    assert message.startswith(f"{tmp_path / 'z.jsonl.zst'}: truncated compressed file")
    message = bad_input(tmp_path, "n.jsonl.zst", f"{good}\n".encode())
    assert message.startswith(f"{tmp_path / 'n.jsonl.zst'}: corrupt compressed data")


def test_empty_inputs(tmp_path):
    assert bad_input(tmp_path, "empty.jsonl", b"") == f"{tmp_path / 'empty.jsonl'}: holds no documents (no record with text); there is nothing to crawl-filter"  # fmt: skip
    assert "holds no documents" in bad_input(tmp_path, "empty.warc.gz", b"")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="nothing/: holds no files|nothing: holds no files"):
        crawl_filter.run([str(tmp_path / "nothing")], tmp_path / "out", small_config())
    assert "cannot tell the format" in bad_input(tmp_path, "data.csv", b"a,b\n")


def test_unwritable_output(tmp_path):
    warc = write_warc(tmp_path / "c.warc.gz", [article(KEPT[0], seed=1)])
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(InputError, match="cannot create the output's parent directory"):
        crawl_filter.run([str(warc)], tmp_path / "file" / "docs", small_config())


# ---------------------------------------------------------------------------------------------------------------
# Cluster executors: the same pipeline, built for Slurm and Ray (no cluster here: checked as constructed)


def test_slurm_and_ray_executors_are_built_with_the_settings(tmp_path):
    from datatrove.executor import SlurmPipelineExecutor
    from datatrove.executor.ray import RayPipelineExecutor

    from llmforge.data.executors import ExecutorSettings, Step, build_executors, check_executor

    built = []

    def pipeline():
        built.append(1)
        return crawl_filter.build_pipeline(
            [("jsonl", [str(tmp_path / "a.jsonl")])], small_config(), tmp_path
        )[0]

    steps = [Step("filter", pipeline, 3), Step("second", pipeline, 1)]
    settings = ExecutorSettings.model_validate({"kind": "slurm", "workers": 8, "slurm": {
        "partition": "cpu", "time": "02:00:00", "cpus_per_task": 2, "sbatch_args": {"account": "lab"}}})  # fmt: skip
    first, second = build_executors(steps, settings, tmp_path / "logs", "crawl-filter")
    assert isinstance(first, SlurmPipelineExecutor) and second.depends is first
    assert (first.tasks, first.partition, first.time, first.cpus_per_task, first.workers) == (
        3,
        "cpu",
        "02:00:00",
        2,
        8,
    )
    assert (
        first.logging_dir.path == str(tmp_path / "logs" / "filter")
        and first.job_name == "crawl-filter-filter"
    )
    assert [type(b).__name__ for b in first.pipeline][-3:] == ["PerLanguage", "PIIRedactor", "DocumentWriter"]
    script = first.get_launch_file_contents(first.get_sbatch_args(3), "launch_pickled_pipeline executor.pik")
    for line in (
        "#SBATCH --partition=cpu",
        "#SBATCH --time=02:00:00",
        "#SBATCH --array=0-2%8",
        "#SBATCH --account=lab",
    ):
        assert line in script
    with pytest.raises(InputError, match="needs a partition"):
        check_executor(ExecutorSettings(kind="slurm"))

    ray = build_executors(steps, ExecutorSettings.model_validate({"kind": "ray", "ray": {"cpus_per_task": 4}}),
                          tmp_path / "logs", "crawl-filter")  # fmt: skip
    assert isinstance(ray[0], RayPipelineExecutor) and ray[1].depends is ray[0]
    assert (ray[0].tasks, ray[0].cpus_per_task, ray[0].workers) == (3, 4, 3)
    shutil.rmtree(tmp_path / "logs", ignore_errors=True)


def test_a_task_waits_for_the_same_task_of_an_earlier_run(tmp_path):
    """After kill -9 a task of the dead run can still be writing (a local worker finishes its task; Ray takes a few
    seconds to end a dead driver's tasks): a resumed run's task waits for it, and runs once it is gone."""
    import subprocess
    import sys
    import threading

    from llmforge.data.executors import TASK_LOCKS, ExecutorSettings, Step, build_executors

    def pipeline():
        return [lambda data, rank, world_size: []]

    (executor,) = build_executors([Step("step", pipeline, 1)], ExecutorSettings(workers=1), tmp_path, "job")
    lock = tmp_path / "step" / TASK_LOCKS / "00000"
    lock.parent.mkdir(parents=True)
    hold = f"import fcntl, time\nf = open({str(lock)!r}, 'w')\nfcntl.flock(f, fcntl.LOCK_EX)\nprint(1, flush=True)\n"
    earlier_task = subprocess.Popen([sys.executable, "-c", hold + "time.sleep(600)"], stdout=subprocess.PIPE)
    try:
        assert earlier_task.stdout.readline()  # it holds the task's lock
        resumed = threading.Thread(target=executor.run)
        resumed.start()
        resumed.join(timeout=3)
        assert resumed.is_alive() and not executor.is_rank_completed(0)
    finally:
        earlier_task.kill()  # as Ray ends a dead driver's task
        earlier_task.wait()
    resumed.join(timeout=60)
    assert not resumed.is_alive() and executor.is_rank_completed(0)


def test_a_filesystem_without_flock_runs_tasks_unguarded(tmp_path, monkeypatch):
    """Some FUSE mounts refuse flock (ENOLCK, ENOTSUP): the task runs as it did before task locks, with a warning."""
    import errno
    import fcntl
    import types

    from llmforge.data.executors import task_lock

    def refused(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    with task_lock(types.SimpleNamespace(path=str(tmp_path)), 3):
        ran = True
    assert ran and (tmp_path / "task-locks" / "00003").exists()


def test_cluster_settings_are_checked_before_the_output_is_created(tmp_path):
    import importlib.util

    from llmforge.stages import dedup

    warc = write_warc(tmp_path / "c.warc.gz", [article(KEPT[0], seed=1)])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "one document"}) + "\n")
    cases = [({"kind": "slurm"}, "--executor slurm needs a partition: --set executor.slurm.partition=NAME")]
    if importlib.util.find_spec("ray") is None:
        cases.append(({"kind": "ray"}, "--executor ray needs the ray package (pip install ray)"))
    for executor, message in cases:
        with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
            crawl_filter.run([str(warc)], tmp_path / "docs", small_config(executor=executor))
        with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
            dedup.run([str(corpus)], tmp_path / "docs", config=dedup.Config(executor=executor))
        assert not (tmp_path / "docs").exists() and not (tmp_path / "docs.partial").exists()


def test_waiting_for_slurm_jobs(tmp_path, monkeypatch):
    """The command waits for the cluster's completion marks, and stops when Slurm no longer knows the job."""
    import threading
    from types import SimpleNamespace

    from llmforge.data.executors import Step, _wait_for_slurm
    from llmforge.errors import LLMForgeError

    logs = tmp_path / "logs" / "filter"
    step, executor = Step("filter", list, 3), SimpleNamespace(job_id="4242")
    squeue = tmp_path / "bin" / "squeue"
    squeue.parent.mkdir()
    squeue.write_text('#!/bin/sh\n[ -f "$(dirname "$0")/running" ] && echo "4242_0 cpu crawl R"\nexit 0\n')
    squeue.chmod(0o755)
    (squeue.parent / "running").touch()
    monkeypatch.setenv("PATH", f"{squeue.parent}:{os.environ['PATH']}")

    def finish_tasks():
        for rank in range(3):
            (logs / "completions").mkdir(parents=True, exist_ok=True)
            (logs / "completions" / f"{rank:05d}").touch()

    threading.Timer(0.2, finish_tasks).start()
    _wait_for_slurm(step, executor, logs, poll=0.05)  # returns once the 3 tasks are marked complete

    (logs / "completions" / "00002").unlink()
    (squeue.parent / "running").unlink()  # the job ended with a task unfinished
    with pytest.raises(LLMForgeError, match="Slurm job 4242 .filter. ended with 1 tasks unfinished"):
        _wait_for_slurm(step, executor, logs, poll=0.05)
