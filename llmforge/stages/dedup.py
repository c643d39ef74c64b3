"""Remove duplicate and benchmark-contaminated documents: exact dedup, MinHash-LSH near-dup dedup, n-gram
decontamination.

Inputs are documents artifacts (from crawl-filter) or raw JSONL / Parquet / text corpora, deduplicated together.
Everything runs as datatrove pipelines: its exact-dedup stages (content hash), its four MinHash stages (signatures,
LSH buckets, clusters, filter), and a decontamination filter that drops every document sharing an n-gram (13 words
by default) with an item of the benchmark files given to `--decontaminate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NotRequired, TypedDict

import typer
from pydantic import Field

from llmforge.config import StageConfig, runtime_field
from llmforge.data.documents import shard_mb_field
from llmforge.data.executors import ExecutorSettings, FilterCounts, check_executor
from llmforge.data.sources import InputSettings
from llmforge.errors import InputError
from llmforge.options import Flag, stage_command

STAGE = "dedup"
CURVE = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
# Hashes per document when bands and rows are derived from the threshold: FineWeb's 14 x 8 = 112, a signature cost
# proven at web scale. Within it, more rows per band sharpen the S-curve (fewer pairs below the target compared).
HASH_BUDGET = 112
CAUGHT = 0.9  # the share of pairs at the target Jaccard that must become candidates


def candidate_probability(similarity: float, buckets: int, rows: int) -> float:
    """Chance that LSH with `buckets` bands of `rows` hashes compares two documents of this Jaccard similarity."""
    return 1 - (1 - similarity**rows) ** buckets


def lsh_shape(threshold: float, buckets: int | None = None, rows: int | None = None) -> tuple[int, int]:
    """Bands x rows for a target Jaccard. Given rows, the bands default to HASH_BUDGET // rows. Otherwise the most
    rows (with HASH_BUDGET // rows bands, or the bands given) that make a pair at the threshold a candidate at least
    CAUGHT of the time; one row per band when no shape does (the stage then warns)."""
    if rows:
        return buckets or max(1, HASH_BUDGET // rows), rows
    shapes = [(buckets or HASH_BUDGET // r, r) for r in range(1, max(1, HASH_BUDGET // (buckets or 1)) + 1)]
    caught = [shape for shape in shapes if candidate_probability(threshold, *shape) >= CAUGHT]
    return caught[-1] if caught else shapes[0]


class MinhashSettings(StageConfig):
    enabled: bool = Field(True, description="Near-duplicate removal with MinHash LSH (datatrove's 4 stages)")
    ngram: int = Field(5, ge=1, description="Shingle size in words (datatrove and FineWeb: 5)")
    buckets: int | None = Field(
        None, ge=1, description="LSH bands b; none = chosen for the threshold (14 at 0.8: FineWeb's)"
    )
    hashes_per_bucket: int | None = Field(
        None, ge=1, description="Rows per band r; none = chosen for the threshold (8 at 0.8); b x r hashes"
    )
    seed: int = Field(1, description="Seed of the hash permutations")
    threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Target Jaccard similarity (seed: ~0.8). Bands and rows left unset are chosen for it within "
        f"{HASH_BUDGET} hashes: the most rows per band that still make a pair at the target a candidate 90% of "
        "the time (14x8 at 0.8, 22x5 at 0.7, 8x13 at 0.9); the stage prints the candidate curve and warns below 90%",
    )

    def lsh(self) -> tuple[int, int]:
        """(bands, rows) that the LSH runs with: as given, or derived from the threshold."""
        return lsh_shape(self.threshold, self.buckets, self.hashes_per_bucket)


class SentenceSettings(StageConfig):
    enabled: bool = Field(
        False,
        description="Remove every span of `span` sentences that an earlier document already has (C4's 3-sentence "
        "dedup, datatrove's 3 stages): boilerplate repeated across pages; off by default, as in FineWeb",
    )
    span: int = Field(3, ge=1, description="Sentences per span (C4: 3)")
    min_words: int = Field(50, ge=0, description="A trimmed document left with fewer words is dropped")
    min_sentences: int = Field(3, ge=0, description="A trimmed document left with fewer sentences is dropped")

    def datatrove(self):
        from datatrove.pipeline.dedup.sentence_dedup import SentDedupConfig

        return SentDedupConfig(n_sentences=self.span, min_doc_words=self.min_words,
                               min_num_sentences=self.min_sentences)  # fmt: skip


class DecontaminationSettings(StageConfig):
    ngram: int = Field(
        13, ge=1, description="A document sharing one word n-gram this long with an item is dropped"
    )
    fields: list[str] = Field(
        default_factory=list,
        description="Benchmark fields to index (question, answer, ...); empty = every text field and list of texts",
    )
    id_field: str = Field(
        "id",
        description="Benchmark field naming an item in the report; items without it are named by position",
    )
    keep_numbers: bool = Field(
        False,
        description="Match numbers as written (datatrove folds every number to 0, so a quoted benchmark matches "
        "whatever its figures; for arithmetic items the numbers are the content, and short ones need this)",
    )


class Config(StageConfig):
    input: InputSettings = Field(default_factory=InputSettings, description="How raw corpus files are read")
    exact: bool = Field(True, description="Remove exact copies (same text, by content hash) first")
    sentences: SentenceSettings = Field(
        default_factory=SentenceSettings, description="Repeated sentence spans (--sentence-dedup)"
    )
    minhash: MinhashSettings = Field(default_factory=MinhashSettings, description="Near-duplicates")
    decontamination: DecontaminationSettings = Field(
        default_factory=DecontaminationSettings,
        description="Benchmark decontamination (--decontaminate FILE)",
    )
    removed_sample: int = Field(
        100,
        ge=-1,
        description="Removed documents kept per filter and task in OUT/removed/ (-1: all, 0: none)",
    )
    shard_mb: float = shard_mb_field()
    executor: ExecutorSettings = runtime_field(
        ExecutorSettings(), description="Where the pipelines run (does not change the output)"
    )


class InputCounts(TypedDict):
    documents: int
    raw_files: NotRequired[int]
    artifact_files: NotRequired[int]  # document files of the documents artifacts read


class DecontaminationCounts(FilterCounts):
    items_hit: int  # benchmark items found in the corpus
    items_too_short: int  # benchmark items with fewer words than one n-gram: they cannot be matched


class SentenceCounts(FilterCounts):
    sentences: int  # in the documents read
    sentences_removed: int  # in the spans taken out (of kept and dropped documents)


class MinhashCounts(FilterCounts):
    clusters: int
    candidate_pairs: int
    buckets: int  # LSH bands x rows used
    hashes_per_bucket: int
    p_candidate_at_threshold: float  # chance that a pair at the target Jaccard is compared


class Stats(TypedDict):
    """What dedup writes in its manifest's stats (read by `llmforge card`); one row per step that ran."""

    input: InputCounts
    decontamination: NotRequired[DecontaminationCounts]  # with --decontaminate
    exact: NotRequired[FilterCounts]
    sentences: NotRequired[SentenceCounts]  # with --sentence-dedup
    minhash: NotRequired[MinhashCounts]
    documents: int  # written
    removed: int


# ---------------------------------------------------------------------------------------------------------------
# Inputs


class Corpus:
    """The documents to deduplicate: documents artifacts and raw files, and their lineage entries."""

    def __init__(self, inputs: list[str], settings: InputSettings):
        from llmforge.artifacts import MANIFEST, open_artifact
        from llmforge.data.documents import document_files
        from llmforge.data.sources import resolve_raw_inputs

        self.artifact_files: list[str] = []
        self.refs = []
        raw_arguments = []
        for argument in inputs:
            if (Path(argument) / MANIFEST).is_file() or Path(str(argument) + ".partial").exists():
                artifact = open_artifact(argument, STAGE, ["documents"])
                self.artifact_files += [str(f) for f in document_files(artifact)]
                self.refs.append(artifact.ref())
            else:
                raw_arguments.append(argument)
        self.raw = resolve_raw_inputs(raw_arguments, settings, STAGE, allowed=("jsonl", "parquet", "text"))
        self.refs += self.raw.refs
        self.settings = settings
        if not self.artifact_files and not self.raw.files:
            raise InputError(f"{', '.join(map(str, inputs))}: no documents to deduplicate")

    def groups(self) -> list[tuple[str, list[str], InputSettings]]:
        from llmforge.data.sources import reader_groups

        groups = [("jsonl", self.artifact_files, InputSettings())] if self.artifact_files else []
        return groups + [(fmt, paths, self.settings) for fmt, paths in reader_groups(self.raw.files)]


# ---------------------------------------------------------------------------------------------------------------
# Benchmarks


class Benchmarks:
    """Benchmark files (JSONL of questions and answers) as an n-gram index; item numbers are global."""

    def __init__(self, paths: list[str], settings: DecontaminationSettings):
        from llmforge.artifacts import raw_input, sha256_file

        self.settings = settings
        self.files: list[dict] = []
        self.item_names: list[tuple[int, object]] = []  # global item number -> (file number, item id)
        self.refs = []
        for path in paths:
            if not Path(path).is_file():
                raise InputError(f"--decontaminate {path}: no such file")
            ref = raw_input(path)
            ref.detail["role"] = "benchmark"
            self.refs.append(ref)
            self.files.append({"path": str(Path(path).resolve()), "sha256": sha256_file(Path(path)), "items": 0,
                               "short_items": 0})  # fmt: skip
        self.items_text: list[str] = []
        for number, path in enumerate(paths):
            for position, item in enumerate(self._read(path)):
                self.item_names.append((number, item.get(settings.id_field, position)))
                self.items_text.append(self._text(item))
                self.files[number]["items"] += 1
            if not self.files[number]["items"]:
                raise InputError(f"--decontaminate {path}: holds no benchmark items; there is nothing to "
                                 "decontaminate against")  # fmt: skip

    def _read(self, path: str):
        from llmforge.data.documents import read_lines
        from llmforge.errors import json_lines, where

        # read_lines: a damaged .gz or .zst is named with the last line read
        for number, item in json_lines(read_lines(Path(path)), path):
            if not isinstance(item, dict):
                raise InputError(f"{where(path, number)}: a benchmark item must be a JSON object")
            missing = [f for f in self.settings.fields if f not in item]
            if missing:
                raise InputError(f"{where(path, number)}: no field {', '.join(missing)} (fields: "
                                 f"{', '.join(sorted(item))}); see decontamination.fields")  # fmt: skip
            yield item

    def _text(self, item: dict) -> str:
        """The item's text fields in order, joined: n-grams spanning question and answer are indexed too."""
        fields = self.settings.fields or [k for k in item if k != self.settings.id_field]
        parts = []
        for name in fields:
            value = item.get(name)
            values = value if isinstance(value, list) else [value]
            parts += [v for v in values if isinstance(v, str)]
        return "\n".join(parts)

    def write_index(self, path: Path) -> None:
        """Sorted n-gram hashes and the item each comes from, for the Decontaminate block."""
        import numpy as np

        from llmforge.data.blocks import ngram_hashes

        hashes, items = [], []
        for number, text in enumerate(self.items_text):
            grams = np.unique(
                ngram_hashes(text, self.settings.ngram, keep_numbers=self.settings.keep_numbers)
            )
            if not len(grams):
                self.files[self.item_names[number][0]]["short_items"] += 1
            hashes.append(grams)
            items.append(np.full(len(grams), number, dtype=np.int64))
        hashes_array = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        items_array = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
        order = np.argsort(hashes_array, kind="stable")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(handle, hashes=hashes_array[order], items=items_array[order])

    def report(self, hit: set[int], removed: int) -> dict:
        """extra["decontamination"], the record eval's contamination check reads."""
        benchmarks = []
        for number, file in enumerate(self.files):
            ids = [name for n, (f, name) in enumerate(self.item_names) if f == number and n in hit]
            benchmarks.append({"path": file["path"], "sha256": file["sha256"], "items": file["items"],
                               "items_hit": ids})  # fmt: skip
        return {"ngram": self.settings.ngram, "benchmarks": benchmarks, "documents_removed": removed}


# ---------------------------------------------------------------------------------------------------------------
# The pipelines


def build_steps(corpus: Corpus, config: Config, work: Path, index: Path | None) -> list:
    """The datatrove steps, in order: [exact signatures, exact duplicates], [sentence signatures, duplicates],
    [MinHash signatures, buckets, clusters], then the filter that writes the output. Every pipeline reads the
    inputs the same way and applies the earlier filters first, so document positions agree between a step's
    signatures and the final filter."""
    from llmforge.console import log
    from llmforge.data.executors import Step
    from llmforge.data.parts import plan_tasks, split_note

    plan = plan_tasks(corpus.groups(), config.input.task_mb)
    tasks = plan.tasks
    checkpoints = work / "checkpoints"
    minhash = config.minhash
    bands, rows = minhash.lsh()

    log(f"{STAGE}: {tasks} tasks{split_note(plan)}")

    def readers() -> list:
        return plan.readers()

    def removed(name: str, final: bool):
        from llmforge.data.blocks import SampleWriter

        if final and config.removed_sample:
            return SampleWriter(str(work / "removed" / name), config.removed_sample)
        return None

    def exact_config():
        from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig

        from llmforge.data.blocks import document_text

        return ExactDedupConfig(content_getter=document_text)

    def minhash_config():
        from datatrove.pipeline.dedup.minhash import MinhashConfig

        return MinhashConfig(
            n_grams=minhash.ngram, num_buckets=bands, hashes_per_bucket=rows, seed=minhash.seed
        )

    def filters(final: bool, through: str) -> list:
        """The filters every later pipeline re-applies, up to (not including) `through`."""
        from datatrove.pipeline.dedup import ExactDedupFilter, MinhashDedupFilter

        from llmforge.data.blocks import Decontaminate

        blocks = []
        if index is not None:
            blocks.append(
                Decontaminate(
                    str(index),
                    config.decontamination.ngram,
                    removed("decontamination", final),
                    keep_numbers=config.decontamination.keep_numbers,
                )
            )
        if through == "exact":
            return blocks
        if config.exact:
            blocks.append(ExactDedupFilter(str(checkpoints / "exact" / "duplicates"), exact_config(),
                                           removed("exact", final)))  # fmt: skip
        if through == "sentences":
            return blocks
        if config.sentences.enabled:
            from datatrove.pipeline.dedup import SentenceDedupFilter

            blocks.append(SentenceDedupFilter(str(checkpoints / "sentences" / "duplicates"),
                                              config.sentences.datatrove(), removed("sentences", final)))  # fmt: skip
        if through == "minhash":
            return blocks
        if minhash.enabled:
            blocks.append(MinhashDedupFilter(str(checkpoints / "minhash" / "remove"),
                                             exclusion_writer=removed("minhash", final)))  # fmt: skip
        return blocks

    steps = []
    if config.exact:

        def exact_signatures() -> list:
            from datatrove.pipeline.dedup import ExactDedupSignature

            return readers() + filters(False, "exact") + [
                ExactDedupSignature(str(checkpoints / "exact" / "signatures"), exact_config())]  # fmt: skip

        def exact_duplicates() -> list:
            from datatrove.pipeline.dedup import ExactFindDedups

            return [ExactFindDedups(str(checkpoints / "exact" / "signatures"),
                                    str(checkpoints / "exact" / "duplicates"), exact_config())]  # fmt: skip

        steps += [
            Step("exact-signatures", exact_signatures, tasks),
            Step("exact-duplicates", exact_duplicates, 1),
        ]
    if config.sentences.enabled:

        def sentence_signatures() -> list:
            from datatrove.pipeline.dedup import SentenceDedupSignature

            return readers() + filters(False, "sentences") + [
                SentenceDedupSignature(str(checkpoints / "sentences" / "signatures"),
                                       config=config.sentences.datatrove())]  # fmt: skip

        def sentence_duplicates() -> list:
            from datatrove.pipeline.dedup import SentenceFindDedups

            return [SentenceFindDedups(str(checkpoints / "sentences" / "signatures"),
                                       str(checkpoints / "sentences" / "duplicates"),
                                       config=config.sentences.datatrove())]  # fmt: skip

        steps += [
            Step("sentence-signatures", sentence_signatures, tasks),
            Step("sentence-duplicates", sentence_duplicates, 1),
        ]
    if minhash.enabled:

        def minhash_signatures() -> list:
            from datatrove.pipeline.dedup import MinhashDedupSignature

            return readers() + filters(False, "minhash") + [
                MinhashDedupSignature(str(checkpoints / "minhash" / "signatures"), minhash_config())]  # fmt: skip

        def minhash_buckets() -> list:
            from datatrove.pipeline.dedup import MinhashDedupBuckets

            return [MinhashDedupBuckets(str(checkpoints / "minhash" / "signatures"),
                                        str(checkpoints / "minhash" / "buckets"), config=minhash_config())]  # fmt: skip

        def minhash_clusters() -> list:
            from datatrove.pipeline.dedup import MinhashDedupCluster

            return [MinhashDedupCluster(str(checkpoints / "minhash" / "buckets"),
                                        str(checkpoints / "minhash" / "remove"), config=minhash_config(),
                                        save_cluster_id=True)]  # fmt: skip

        steps += [Step("minhash-signatures", minhash_signatures, tasks),
                  Step("minhash-buckets", minhash_buckets, bands),
                  Step("minhash-clusters", minhash_clusters, 1)]  # fmt: skip

    def final() -> list:
        from llmforge.data.blocks import DocumentWriter

        return readers() + filters(True, "all") + [DocumentWriter(str(work / "data"), config.shard_mb)]

    steps.append(Step("filter", final, tasks))
    return steps


# ---------------------------------------------------------------------------------------------------------------
# The stage


def run(inputs: list[str], out: str | Path, decontaminate: list[str] | None = None, config: Config | None = None,
        force: bool = False) -> Path:  # fmt: skip
    """Deduplicate (and decontaminate) documents into a documents artifact; returns its path."""
    from llmforge.artifacts import run_stage

    config = config or Config()
    if not inputs:
        raise InputError(f"{STAGE} needs at least one documents artifact or corpus file")
    if not (config.exact or config.sentences.enabled or config.minhash.enabled or decontaminate):
        raise InputError(
            f"{STAGE} has nothing to do: exact and minhash are off and no --decontaminate file is given"
        )
    check_executor(config.executor)
    corpus = Corpus([str(i) for i in inputs], config.input)
    benchmarks = Benchmarks([str(p) for p in decontaminate or []], config.decontamination)
    refs = corpus.refs + benchmarks.refs
    return run_stage(STAGE, "documents", config, refs, out, lambda ctx: _dedup(ctx, corpus, benchmarks, config),
                     force=force)  # fmt: skip


def print_candidate_curve(minhash: MinhashSettings) -> None:
    from rich.table import Table

    from llmforge.console import console, log, warn

    b, r = minhash.lsh()
    at_threshold = candidate_probability(minhash.threshold, b, r)
    chosen = "" if minhash.buckets and minhash.hashes_per_bucket else " (chosen for the threshold)"
    log(f"MinHash LSH: {b} buckets x {r} hashes{chosen}, {minhash.ngram}-word shingles: a pair with Jaccard "
        f"{minhash.threshold} is compared with probability 1-(1-s^{r})^{b} = {at_threshold:.3f}; the curve is "
        f"steepest near {(1 / b) ** (1 / r):.2f}")  # fmt: skip
    table = Table("Jaccard", "P(candidate)", title="LSH candidate probability", title_justify="left")
    for similarity in sorted({*CURVE, minhash.threshold}):
        mark = " <- target" if similarity == minhash.threshold else ""
        table.add_row(f"{similarity:.2f}", f"{candidate_probability(similarity, b, r):.3f}{mark}")
    console.print(table)
    if at_threshold < CAUGHT:
        warn(f"only {at_threshold:.0%} of pairs at Jaccard {minhash.threshold} become candidates; use more "
             "buckets or fewer hashes per bucket to catch them")  # fmt: skip


def _dedup(ctx, corpus: Corpus, benchmarks: Benchmarks, config: Config) -> None:
    import shutil

    from llmforge.console import log, warn
    from llmforge.data.executors import filter_counts, run_steps, step_stats

    index = None
    if benchmarks.files:
        index = ctx.work / "checkpoints" / "benchmarks.npz"
        benchmarks.write_index(index)
        log(f"decontamination: {sum(f['items'] for f in benchmarks.files)} benchmark items from "
            f"{len(benchmarks.files)} file(s), {config.decontamination.ngram}-grams")  # fmt: skip
        for file in benchmarks.files:
            if file["short_items"]:
                warn(f"{file['short_items']} of {file['items']} items of {file['path']} have fewer than "
                     f"{config.decontamination.ngram} words and cannot be matched (--decontamination-ngram)")  # fmt: skip
    if config.minhash.enabled:
        print_candidate_curve(config.minhash)

    steps = build_steps(corpus, config, ctx.work, index)
    run_steps(steps, config.executor, ctx.work / "logs", STAGE, ctx.fingerprint)

    logs = ctx.work / "logs"
    final = step_stats(logs / "filter")
    labels = ["read"] * len(corpus.groups())
    labels += (["decontamination"] * bool(index) + ["exact"] * config.exact
               + ["sentences"] * config.sentences.enabled + ["minhash"] * config.minhash.enabled)  # fmt: skip
    counters = list(zip(labels + ["write"], final, strict=True))
    read = sum(int(c.get("documents", 0)) for name, c in counters if name == "read")
    stats: dict = {"input": {"documents": read}}
    if corpus.raw.files:
        stats["input"]["raw_files"] = len(corpus.raw.files)
    if corpus.artifact_files:
        stats["input"]["artifact_files"] = len(corpus.artifact_files)
    hit: set[int] = set()
    for position, (name, counter) in enumerate(
        counters[len(corpus.groups()) : -1], start=len(corpus.groups())
    ):
        row = filter_counts(counter)
        row.pop("reasons", None)
        if name == "sentences":  # not a datatrove filter: what it passes on is what the next block reads
            row["out"] = int(counters[position + 1][1].get("total", 0))
            row["removed"] = row["in"] - row["out"]
            row["sentences"] = int(counter.get("original_sentences", 0))
            row["sentences_removed"] = int(counter.get("removed_sentences", 0))
        if name == "decontamination":
            hit = {int(k.removeprefix("item_")) for k in counter if k.startswith("item_")}
            row["items_hit"] = len(hit)
            # items with fewer words than one n-gram cannot be found
            row["items_too_short"] = sum(f["short_items"] for f in benchmarks.files)
        if name == "minhash":
            clusters = step_stats(logs / "minhash-clusters")[0]
            buckets = step_stats(logs / "minhash-buckets")[0]
            row["clusters"] = int(clusters.get("clusters", 0))
            row["candidate_pairs"] = int(buckets.get("total_matches", 0))
            row["buckets"], row["hashes_per_bucket"] = shape = config.minhash.lsh()
            p_candidate = candidate_probability(config.minhash.threshold, *shape)
            row["p_candidate_at_threshold"] = round(p_candidate, 4)
        stats[name] = row
    written = int(counters[-1][1].get("total", 0))
    stats["documents"] = written
    stats["removed"] = read - written
    ctx.stats.update(stats)
    removed_by_decontamination = stats.get("decontamination", {}).get("removed", 0)
    ctx.extra["decontamination"] = benchmarks.report(hit, removed_by_decontamination)
    for file in ctx.extra["decontamination"]["benchmarks"]:
        if file["items_hit"]:
            shown = ", ".join(map(str, file["items_hit"][:10])) + (
                " ..." if len(file["items_hit"]) > 10 else ""
            )
            log(f"[yellow]contaminated:[/] {len(file['items_hit'])} of {file['items']} items of {file['path']} "
                f"found in the corpus ({shown})")  # fmt: skip
    shutil.rmtree(ctx.work / "checkpoints", ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Command line


FLAGS = (
    Flag("sentences.enabled", "--sentence-dedup"),
    Flag("minhash.ngram", "--shingle"),
    Flag("minhash.buckets"),
    Flag("minhash.hashes_per_bucket"),
    Flag("minhash.threshold"),
    Flag("decontamination.ngram", "--decontamination-ngram"),
    Flag("input.text_field"),
    Flag("input.task_mb"),
    Flag("executor.workers"),
    Flag("executor.kind", "--executor"),
)


@stage_command(FLAGS)
def command(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Documents artifacts (from crawl-filter) or JSONL / Parquet / text corpora."),
    ],
    output: Path,
    config: Config,
    decontaminate: Annotated[
        list[str] | None,
        typer.Option("--decontaminate", help="A benchmark JSONL file to decontaminate against (repeatable)."),
    ] = None,
    force: bool = False,
) -> None:
    """Remove exact and near-duplicate documents (MinHash LSH) and benchmark-contaminated ones (13-gram overlap)."""
    run(inputs, output, decontaminate, config, force=force)
