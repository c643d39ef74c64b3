"""Model-based quality filtering (DCLM, FineWeb-Edu): annotate a sample with a local model, train a classifier, keep
the documents it scores best.

- `quality annotate DOCS --model MODEL`: a local instruct model scores a sample of documents with FineWeb-Edu's
  additive 0-5 educational rubric (llmforge/data/annotate.py); writes an annotations artifact (the documents of the
  sample with `metadata.edu_score`), whose inputs are the documents and the model.
- `quality train POSITIVE... --negative NEGATIVE`: a classifier (hashed word n-grams, tf-idf, logistic regression;
  llmforge/data/quality.py) trained on positives against negatives, measured on a held-out share; annotations
  artifacts given as inputs split into positives (score at least `positive_min`) and negatives. Writes a
  quality-classifier artifact.
- `quality filter DOCS --classifier CLS`: scores every document (`metadata.quality_score`) and keeps the top share
  (`--keep 0.1`: DCLM's top 10%) or those above `--threshold`; the classifier (an artifact, or a published fastText
  model file) is an input of the documents artifact it writes. Runs on datatrove executors and resumes.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import typer
from pydantic import Field, model_validator

from llmforge.config import StageConfig, runtime_field
from llmforge.data.documents import shard_mb_field
from llmforge.data.executors import ExecutorSettings, FilterCounts
from llmforge.data.quality import ARTIFACT_KIND, FilterSettings, TrainSettings
from llmforge.data.sources import InputSettings, ReadSettings
from llmforge.errors import InputError
from llmforge.options import Flag, stage_command

TRAIN_STAGE, FILTER_STAGE, ANNOTATE_STAGE = "quality train", "quality filter", "quality annotate"
ANNOTATIONS_KIND = "annotations"
DEFAULT_KEEP = 0.1  # DCLM keeps the top 10%


class TrainConfig(TrainSettings):
    positive_min: int = Field(
        3,
        ge=1,
        le=5,
        description="Annotations inputs: a document scoring at least this is a positive, below it a negative "
        "(FineWeb-Edu: 3)",
    )
    roles: list[str] = Field(
        default_factory=list,
        description="The role of each input, in order (positive, annotations, negative); set from the command line",
    )


class FilterConfig(FilterSettings):
    keep: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Keep this top share of the documents by score, in two passes; neither keep nor threshold "
        f"given: {DEFAULT_KEEP} (DCLM's top 10%)",
    )
    input: InputSettings = Field(default_factory=InputSettings, description="How raw files are read")
    removed_sample: int = Field(
        100, ge=-1, description="Removed documents kept per task in OUT/removed/quality (-1: all, 0: none)"
    )
    shard_mb: float = shard_mb_field()
    executor: ExecutorSettings = runtime_field(
        ExecutorSettings(), description="Where the pipelines run (does not change the output)"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_rule(cls, data: Any) -> Any:
        """Neither rule given: DCLM's top 10%."""
        if isinstance(data, dict) and data.get("keep") is None and data.get("threshold") is None:
            return {**data, "keep": DEFAULT_KEEP}
        return data


class AnnotateConfig(StageConfig):
    input: ReadSettings = Field(default_factory=ReadSettings, description="How raw files are read")
    sample: int = Field(
        1000, ge=1, description="Documents annotated: a seeded uniform sample (all of them when fewer)"
    )
    seed: int = Field(0, description="Seed of the sample")
    max_tokens: int = Field(
        256,
        ge=0,
        description="Answer tokens per document (the rubric asks for up to 100 words, then the score); 0: no "
        "justification, only the forced score (the likeliest digit after 'Educational score:'), ~100x cheaper",
    )
    max_document_tokens: int = Field(
        2048,
        ge=16,
        description="A longer document is cut to this many tokens (and to what the context leaves)",
    )
    batch_size: int = runtime_field(16, ge=1, description="Documents generated at once (continuous batching)")
    tensor_parallel_size: int = runtime_field(1, ge=1, description="vllm: GPUs to shard the model across")
    backend: Literal["auto", "embedded", "vllm"] = runtime_field(
        "auto",
        description="embedded: the model in this process (float32); vllm: vLLM's server started for the run (as "
        "`serve --backend vllm`; the model's stored dtype); auto: vllm when `serve` would pick it, else embedded",
    )


class Heldout(TypedDict):
    positive: int
    negative: int
    precision: float
    recall: float
    accuracy: float
    roc_auc: float
    score_quantiles: dict[str, dict[str, float]]  # positive / negative -> p10 ... p90


class AnnotationSplit(TypedDict):
    positive: int  # documents scoring at least positive_min
    negative: int
    unparsed: int  # documents without a score: left out


class TrainStats(TypedDict):
    """What quality train writes in its manifest's stats."""

    documents: dict[str, int]  # positive / negative, held-out ones included
    train: dict[str, int]
    heldout: Heldout
    annotations: NotRequired[AnnotationSplit]


class FilterStats(TypedDict):
    """What quality filter writes in its manifest's stats (read by `llmforge card`)."""

    input: dict[str, int]  # documents read
    rule: dict[str, float]  # keep (a top share) or threshold
    threshold: float  # the lowest score kept (for keep: where the top share starts)
    documents: int
    removed: int
    kept_share: float
    filters: dict[str, FilterCounts]  # quality
    score_quantiles: dict[str, float]  # of the whole input


class AnnotateStats(TypedDict):
    """What quality annotate writes in its manifest's stats."""

    input: dict[str, int]  # documents read
    documents: int  # annotated (the sample)
    parsed: int  # scores parsed from the model's reply
    forced: int  # replies without a score (or none asked for): the likeliest digit after "Educational score:"
    score_counts: dict[str, int]  # "0" ... "5"
    mean_score: float | None
    truncated: int  # documents cut to fit
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # scoring, the model's loading and vLLM's startup left out
    tokens_per_second: float  # generated, over those seconds
    chunks_reused: int  # from an interrupted run
    backend: str  # "embedded", or "vLLM 0.32.0 (GPU)"


# ---------------------------------------------------------------------------------------------------------------
# quality train


class Side:
    """The documents of one side of the classifier, as train_classifier reads a corpus (`documents()`)."""

    def __init__(self) -> None:
        self.sources: list = []  # Corpus objects and lists of texts

    def documents(self):
        for source in self.sources:
            if isinstance(source, list):
                yield from (SimpleNamespace(text=text) for text in source)
            else:
                yield from source.documents()


def read_annotations(path: str, positive_min: int) -> tuple[Any, list[str], list[str], int]:
    """An annotations artifact: (its ref, positive texts, negative texts, replies without a score)."""
    from llmforge.artifacts import open_artifact
    from llmforge.data.annotate import SCORE_KEY
    from llmforge.data.documents import iter_documents
    from llmforge.errors import where

    artifact = open_artifact(path, TRAIN_STAGE, [ANNOTATIONS_KIND])
    positives, negatives, unparsed = [], [], 0
    for number, record in enumerate(iter_documents(artifact), 1):
        score = (record.get("metadata") or {}).get(SCORE_KEY, "missing")
        if score is None:
            unparsed += 1
        elif isinstance(score, int) and 0 <= score <= 5:
            (positives if score >= positive_min else negatives).append(record["text"])
        else:
            raise InputError(
                f"{where(path, number)}: metadata.{SCORE_KEY} must be 0-5 or null, not {score!r}"
            )
    return artifact.ref(), positives, negatives, unparsed


def train(inputs: list[str], out: str | Path, negatives: list[str] | None = None, config: TrainConfig | None = None,
          force: bool = False) -> Path:  # fmt: skip
    """Train a quality classifier; returns the quality-classifier artifact's path."""
    from llmforge.artifacts import MANIFEST, Artifact, run_stage
    from llmforge.data.corpus import Corpus

    config = config or TrainConfig()
    if not inputs:
        raise InputError(f"{TRAIN_STAGE} needs positive documents or an annotations artifact")
    annotated = [
        i for i in inputs if (Path(i) / MANIFEST).is_file() and Artifact.open(i).kind == ANNOTATIONS_KIND
    ]
    plain = [i for i in inputs if i not in annotated]
    if not negatives and not annotated:
        raise InputError(f"{TRAIN_STAGE} needs negatives: --negative DOCS, or an annotations artifact (made by "
                         f"`llmforge {ANNOTATE_STAGE}`) whose low scores are the negatives")  # fmt: skip
    positive, negative = Side(), Side()
    refs, roles = [], []
    if plain:
        corpus = Corpus(plain, config.input, TRAIN_STAGE)
        positive.sources.append(corpus)
        refs += corpus.refs
        roles += ["positive"] * len(corpus.refs)
    split = {"positive": 0, "negative": 0, "unparsed": 0}
    for path in annotated:
        ref, good, bad, unparsed = read_annotations(path, config.positive_min)
        positive.sources.append(good)
        negative.sources.append(bad)
        split = {"positive": split["positive"] + len(good), "negative": split["negative"] + len(bad),
                 "unparsed": split["unparsed"] + unparsed}  # fmt: skip
        refs.append(ref)
        roles.append("annotations")
    if negatives:
        corpus = Corpus(negatives, config.input, TRAIN_STAGE)
        negative.sources.append(corpus)
        refs += corpus.refs
        roles += ["negative"] * len(corpus.refs)
    # the roles are part of the fingerprint: `A B --negative C` and `A --negative B C` read the same inputs
    config = TrainConfig.model_validate({**config.model_dump(), "roles": roles})

    def body(ctx) -> None:
        from llmforge.console import log
        from llmforge.data.quality import train_classifier

        if annotated:
            log(f"annotations: {split['positive']:,} documents score at least {config.positive_min} (positives), "
                f"{split['negative']:,} below (negatives), {split['unparsed']:,} without a score")  # fmt: skip
            ctx.stats["annotations"] = split
        ctx.stats.update(train_classifier(positive, negative, ctx.work, config))
        heldout = ctx.stats["heldout"]
        log(f"held out: precision {heldout['precision']}, recall {heldout['recall']}, ROC AUC {heldout['roc_auc']} "
            f"({heldout['positive']:,} positive, {heldout['negative']:,} negative documents)")  # fmt: skip

    return run_stage(TRAIN_STAGE, ARTIFACT_KIND, config, refs, out, body, force=force)


# ---------------------------------------------------------------------------------------------------------------
# quality filter


def filter_run(inputs: list[str], out: str | Path, classifier: str | Path | None, config: FilterConfig | None = None,
               force: bool = False) -> Path:  # fmt: skip
    """Keep the documents the classifier scores best; returns the documents artifact's path."""
    from llmforge.artifacts import run_stage
    from llmforge.data.corpus import Corpus
    from llmforge.data.executors import check_executor
    from llmforge.data.quality import classifier_input, filter_documents

    config = config or FilterConfig()
    if classifier is None:
        raise InputError(f"{FILTER_STAGE} needs --classifier: a quality-classifier artifact (made by "
                         f"`llmforge {TRAIN_STAGE}`) or a fastText model file")  # fmt: skip
    if not inputs:
        raise InputError(f"{FILTER_STAGE} needs at least one documents artifact or corpus file")
    check_executor(config.executor)
    corpus = Corpus([str(i) for i in inputs], config.input, FILTER_STAGE)
    ref = classifier_input(classifier, config.label, FILTER_STAGE)

    def body(ctx) -> None:
        from llmforge.console import log, warn

        ctx.stats.update(filter_documents(corpus, classifier, config, ctx.work, config.executor, ctx.fingerprint,
                                          removed_sample=config.removed_sample, stage=FILTER_STAGE,
                                          shard_mb=config.shard_mb))  # fmt: skip
        s = ctx.stats
        log(f"kept {s['documents']:,} of {s['input']['documents']:,} documents ({s['kept_share']:.1%}) scoring at "
            f"least {s['threshold']:.4f}")  # fmt: skip
        if s["documents"] == 0:
            warn("every document was removed; see the score quantiles and the samples in removed/quality")

    return run_stage(FILTER_STAGE, "documents", config, [*corpus.refs, ref], out, body, force=force)


# ---------------------------------------------------------------------------------------------------------------
# quality annotate


def annotate(inputs: list[str], out: str | Path, model: str | Path | None, config: AnnotateConfig | None = None,
             force: bool = False) -> Path:  # fmt: skip
    """Score a sample of documents with a local instruct model; returns the annotations artifact's path."""
    from llmforge.artifacts import run_stage
    from llmforge.data.corpus import Corpus
    from llmforge.model.loading import resolve_model
    from llmforge.serving.engine import limit_openmp_spinning

    limit_openmp_spinning()  # before torch is imported: the engine generates in a thread of its own
    config = config or AnnotateConfig()
    if model is None:
        raise InputError(f"{ANNOTATE_STAGE} needs --model: an instruct model (a model artifact or a Hugging Face "
                         "directory) to score the documents")  # fmt: skip
    if not inputs:
        raise InputError(f"{ANNOTATE_STAGE} needs at least one documents artifact or corpus file")
    source = resolve_model(model, ANNOTATE_STAGE)
    corpus = Corpus([str(i) for i in inputs], config.input, ANNOTATE_STAGE)
    backend = _annotate_backend(config.backend)
    if backend == "embedded" and config.tensor_parallel_size > 1:
        raise InputError(f"--tensor-parallel-size {config.tensor_parallel_size} shards the model with vLLM: it "
                         "needs --backend vllm")  # fmt: skip
    model_ref = source.ref()
    model_ref.detail["role"] = "annotator"
    return run_stage(ANNOTATE_STAGE, ANNOTATIONS_KIND, config, [*corpus.refs, model_ref], out,
                     lambda ctx: _annotate(ctx, corpus, source, backend, config), force=force)  # fmt: skip


def _annotate(ctx, corpus, source, backend: str, config: AnnotateConfig) -> None:
    import gzip
    import json
    import shutil
    import time

    from llmforge.console import log, warn
    from llmforge.data.annotate import annotate_documents, open_annotator, sample_documents, score_stats

    documents, read = sample_documents(corpus.documents(), config.sample, config.seed)
    if not documents:
        raise InputError(
            f"{ANNOTATE_STAGE}: the {read:,} input documents hold no text; there is nothing to score"
        )
    log(f"annotating {len(documents):,} of {read:,} documents with {source.path}")
    with open_annotator(source, backend, config.max_tokens, config.max_document_tokens, config.batch_size,
                        ANNOTATE_STAGE, config.tensor_parallel_size) as annotator:  # fmt: skip
        started = time.perf_counter()
        records, reused = annotate_documents(documents, annotator, ctx.work / "parts")
    seconds = time.perf_counter() - started
    (ctx.work / "data").mkdir(exist_ok=True)
    with gzip.GzipFile(ctx.work / "data" / "00000.jsonl.gz", "wb", mtime=0) as handle:
        handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    shutil.rmtree(ctx.work / "parts")
    stats = {"input": {"documents": read}, **score_stats(records), **annotator.counts,
             "seconds": round(seconds, 2),
             "tokens_per_second": round(annotator.counts["completion_tokens"] / max(seconds, 1e-9), 1),
             "chunks_reused": reused, "backend": annotator.generation.name}  # fmt: skip
    ctx.stats.update(stats)
    counts = ", ".join(f"{score}: {count}" for score, count in stats["score_counts"].items())
    log(f"scores ({counts}); mean {stats['mean_score']}; {stats['parsed']} parsed from the replies, "
        f"{stats['forced']} forced")  # fmt: skip
    if config.max_tokens and stats["forced"] > len(records) // 2:
        warn(f"{stats['forced']} of {len(records)} replies gave no 'Educational score: N' and were scored by the "
             "forced answer; does the model follow the rubric? (see metadata.edu_reply)")  # fmt: skip


def _annotate_backend(choice: str) -> str:
    """embedded or vllm; auto as `serve` decides (vLLM importable here, or $LLMFORGE_VLLM_PYTHON set), and says why."""
    from llmforge.console import log
    from llmforge.serving import vllm_backend

    if choice == "vllm":
        vllm_backend.runtime(explicit=True)  # found, or refused before the output is created
    if choice != "auto":
        return choice
    reason = vllm_backend.unavailable_reason()
    if reason and not isinstance(found := vllm_backend.find(explicit=True), str):
        # auto does not switch environments behind the user's back (as serve), but says where vLLM is
        reason += (
            f"; --backend vllm would run it from {found.python} (bench/bench_annotate.py: 9x faster on a CPU)"
        )
    log(f"backend: the embedded CPU engine ({reason})" if reason else "backend: vLLM")
    return "embedded" if reason else "vllm"


# ---------------------------------------------------------------------------------------------------------------
# Command line

Documents = Annotated[
    list[str],
    typer.Argument(
        help="Documents artifacts, or JSONL (.gz, .zst), Parquet or .txt files, folders or globs."
    ),
]
INPUT_FLAGS = (Flag("input.text_field"), Flag("input.format", "--input-format"))
TRAIN_FLAGS = (Flag("holdout"), Flag("max_documents"), Flag("positive_min"), Flag("seed"), *INPUT_FLAGS)
FILTER_FLAGS = (Flag("keep"), Flag("threshold"), Flag("label"), *INPUT_FLAGS, Flag("input.task_mb"),
                Flag("executor.workers"), Flag("executor.kind", "--executor"))  # fmt: skip
ANNOTATE_FLAGS = (Flag("sample"), Flag("seed"), Flag("max_tokens"), Flag("max_document_tokens"),
                  Flag("batch_size"), Flag("backend"), Flag("tensor_parallel_size"), *INPUT_FLAGS)  # fmt: skip


@stage_command(TRAIN_FLAGS)
def train_command(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Positive documents (documents artifacts, JSONL, Parquet or text), or annotations "
                       "artifacts (made by `llmforge quality annotate`), split into both sides by --positive-min."),
    ],
    output: Path,
    config: TrainConfig,
    negative: Annotated[
        list[str] | None,
        typer.Option("--negative", help="Negative documents (artifacts or files; repeatable)."),
    ] = None,
    force: bool = False,
) -> None:  # fmt: skip
    """Train a quality classifier on positive against negative documents; report held-out precision and recall."""
    train(inputs, output, negative, config, force=force)


@stage_command(FILTER_FLAGS)
def filter_command(
    inputs: Documents,
    output: Path,
    config: FilterConfig,
    classifier: Annotated[
        str | None,
        typer.Option(
            "--classifier", help="A quality-classifier artifact, or a fastText model file (DCLM's)."
        ),
    ] = None,
    force: bool = False,
) -> None:
    """Score every document with a quality classifier and keep the best (a top share or a threshold)."""
    filter_run(inputs, output, classifier, config, force=force)


@stage_command(ANNOTATE_FLAGS)
def annotate_command(
    inputs: Documents,
    output: Path,
    config: AnnotateConfig,
    model: Annotated[
        str | None,
        typer.Option("--model", help="An instruct model: a model artifact or a Hugging Face directory."),
    ] = None,
    force: bool = False,
) -> None:
    """Have a local instruct model score a sample of documents with FineWeb-Edu's 0-5 educational rubric."""
    annotate(inputs, output, model, config, force=force)
