"""Train the tokenizer on the data mix, then encode documents into token shards with that mix.

`tokenize train` writes a tokenizer artifact: byte-level BPE (or SentencePiece-style Unigram) with special tokens
reserved from the start and a ChatML template, as Hugging Face files at the artifact's root. `tokenize encode`
writes a tokens artifact (llmforge/data/shards.py): every document followed by EOS, document boundaries kept, a
held-out validation split, and the inputs mixed by weight. Inputs are documents artifacts, each optionally named
and weighted: `web=docs/web:0.7 wiki=docs/wiki:0.3`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NotRequired, TypedDict

import typer
from pydantic import Field

from llmforge import machine
from llmforge.artifacts import Artifact, InputRef
from llmforge.config import StageConfig, runtime_field
from llmforge.errors import InputError
from llmforge.options import Flag, stage_command

TRAIN_STAGE = "tokenize train"
ENCODE_STAGE = "tokenize encode"
# Held-out text for the fertility report never takes more than this share of an input's documents.
HELD_OUT_SHARE = 0.1
# Beyond about 4 passes, repeated data is worth much less than fresh data (Muennighoff et al. 2023).
USEFUL_PASSES = 4

Weight = Annotated[float, Field(gt=0)]


class TrainConfig(StageConfig):
    algorithm: Literal["bpe", "unigram"] = Field(
        "bpe",
        description="bpe: byte-level BPE (GPT, Llama); unigram: SentencePiece-style Unigram on the same bytes",
    )
    vocab_size: int = Field(
        65536,
        description="Vocabulary size, special tokens included (65,536 is the largest that fits uint16 shards)",
    )
    min_frequency: int = Field(
        2, ge=1, description="BPE only: a pair must occur this often to become a token"
    )
    weights: dict[str, Weight] = Field(
        default_factory=dict,
        description="Share of the training sample per input name (or NAME=DIR:WEIGHT); empty = natural shares",
    )
    sample_bytes: int = Field(
        1_000_000_000, gt=0, description="Bytes of text drawn from the inputs by weight to train on"
    )
    held_out_bytes: int = Field(
        10_000_000,
        ge=0,
        description="Bytes of documents kept out of training to measure fertility (at most a tenth of each input)",
    )
    seed: int = Field(0, description="Seed for drawing the sample and the held-out documents")


class EncodeConfig(StageConfig):
    weights: dict[str, Weight] = Field(
        default_factory=dict,
        description="Share of the training tokens per input name (or NAME=DIR:WEIGHT); a share above an input's "
        "natural share repeats its documents; empty = natural shares",
    )
    target_tokens: int | None = Field(
        None, gt=0, description="Training tokens after mixing; none = as many as the inputs hold"
    )
    val_fraction: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="Share of each input's documents held out for validation, never trained on",
    )
    shard_tokens: int = Field(100_000_000, gt=0, description="Tokens per shard file")
    seed: int = Field(
        0, description="Seed for the validation split, the mixing draw and the document shuffle"
    )
    workers: int = runtime_field(0, ge=0, description="Processes encoding in parallel; 0 = one per CPU core")
    chunk_chars: int = runtime_field(
        2_000_000,
        gt=0,
        description="Characters of text per encoding task; an interrupted run keeps finished tasks",
    )


class SampleCounts(TypedDict):
    documents: int  # in the input
    bytes: int  # of text in the input
    sample_bytes: int  # drawn into the training sample
    passes: float  # sample_bytes over the bytes that could be drawn (held-out documents excluded)


class Fertility(TypedDict):
    documents: int
    bytes_per_token: float  # higher is better
    tokens_per_word: float  # lower is better


class TrainStats(TypedDict):
    """What tokenize train writes in its manifest's stats (read by `llmforge card`)."""

    algorithm: str
    vocab_size: int
    sources: dict[str, SampleCounts]  # by input name
    held_out: NotRequired[Fertility]  # on documents kept out of the sample
    held_out_by_language: NotRequired[dict[str, Fertility]]


class SourceMix(TypedDict):
    weight: float  # asked share of the training tokens
    tokens: int  # training tokens after mixing
    share: float  # of all training tokens
    natural_tokens: int  # training tokens the input holds once
    passes: float
    max_repeats: int  # of one document
    documents: int  # training documents after mixing, repeats counted
    val_tokens: int


class EncodeStats(TypedDict):
    """What tokenize encode writes in its manifest's stats (read by `llmforge card`)."""

    tokens: int  # in the train split
    documents: int
    val_tokens: int
    val_documents: int
    dtype: str  # of the shards
    shards: int
    sources: dict[str, SourceMix]  # by input name
    encoded_chunks_reused: int  # from an interrupted run


# ---------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Source:
    """One documents artifact of the mix, under its name."""

    name: str
    artifact: Artifact

    def ref(self) -> InputRef:
        ref = self.artifact.ref()
        ref.detail["name"] = self.name
        return ref


def open_sources(
    specs: list[str], configured: dict[str, float], stage: str
) -> tuple[list[Source], dict[str, float]]:
    """Parse `NAME=DIR:WEIGHT` specs, check every input is a documents artifact with some text, resolve the
    weights. An input whose documents are all blank is refused like an empty one: encoded, it would be nothing but
    EOS tokens, repeated to fill its weight."""
    from llmforge.artifacts import open_artifact
    from llmforge.data.documents import iter_texts
    from llmforge.data.mixture import parse_source, resolve_weights

    if not specs:
        raise InputError(f"{stage} needs at least one documents artifact")
    parsed = [parse_source(spec) for spec in specs]
    weights = resolve_weights(parsed, configured)
    sources = []
    verb = stage.split()[-1]
    for spec in parsed:
        artifact = open_artifact(spec.path, stage, ["documents"])
        count, texts = 0, iter_texts(artifact)
        for text in texts:  # stops at the first document with text: one read for any real corpus
            count += 1
            if text.strip():
                break
        else:
            if count == 0:
                raise InputError(f"{spec.path}: holds no documents; there is nothing to {verb}")
            raise InputError(f"{spec.path}: its {count:,} documents hold no text (all empty or whitespace); "
                             f"there is nothing to {verb}")  # fmt: skip
        texts.close()
        sources.append(Source(spec.name, artifact))
    return sources, weights


def _with_weights(config, weights: dict[str, float]):
    return type(config).model_validate({**config.model_dump(), "weights": weights})


# ---------------------------------------------------------------------------------------------------------------
# tokenize train


def train(inputs: list[str], out: str | Path, config: TrainConfig | None = None, force: bool = False) -> Path:
    """Train a tokenizer on a weighted sample of documents artifacts; returns the tokenizer artifact's path."""
    from llmforge.artifacts import run_stage
    from llmforge.data.tokenizer import minimum_vocab_size

    config = config or TrainConfig()
    minimum = minimum_vocab_size()
    if config.vocab_size < minimum:
        raise InputError(
            f"vocab_size {config.vocab_size} is too small: the 256 byte symbols and {minimum - 256} special "
            f"tokens alone need {minimum}"
        )
    sources, weights = open_sources(inputs, config.weights, TRAIN_STAGE)
    config = _with_weights(config, weights)
    return run_stage(TRAIN_STAGE, "tokenizer", config, [s.ref() for s in sources], out,
                     lambda ctx: _train(ctx, sources, config), force=force)  # fmt: skip


def _train(ctx, sources: list[Source], config: TrainConfig) -> None:
    import numpy as np

    from llmforge.console import log, progress
    from llmforge.data.documents import iter_documents, iter_texts
    from llmforge.data.mixture import budgets, draw, hold_out
    from llmforge.data.tokenizer import build_tokenizer, fertility, tokenizer_fingerprint, wrap

    rng = np.random.default_rng(config.seed)
    sizes = {}
    with progress(transient=True) as bar:
        task = bar.add_task("measuring inputs", total=None, unit="docs")
        for source in sources:
            lengths = []
            for text in iter_texts(source.artifact):
                lengths.append(len(text.encode("utf-8")))
                bar.advance(task)
            sizes[source.name] = np.asarray(lengths, dtype=np.int64)
    natural = {name: int(s.sum()) for name, s in sizes.items()}
    held_out_budget = budgets(natural, config.weights, config.held_out_bytes)
    held = {
        name: hold_out(s, HELD_OUT_SHARE if config.held_out_bytes else 0, rng, max_size=held_out_budget[name])
        for name, s in sizes.items()
    }
    trainable = {name: int(s[~held[name]].sum()) for name, s in sizes.items()}
    sample_budget = budgets(trainable, config.weights, min(config.sample_bytes, sum(trainable.values())))
    counts = {}
    for name, s in sizes.items():
        counts[name] = np.zeros(len(s), dtype=np.int64)
        counts[name][~held[name]] = draw(s[~held[name]], sample_budget[name], rng)

    held_out: list[tuple[str, str | None]] = []  # (text, language)

    def sample():
        """The training texts, each as often as drawn; held-out documents are set aside on the way."""
        with progress() as bar:
            task = bar.add_task(
                "training on the sample", total=sum(len(s) for s in sizes.values()), unit="docs"
            )
            for source in sources:
                for index, record in enumerate(iter_documents(source.artifact)):
                    bar.advance(task)
                    if held[source.name][index]:
                        held_out.append((record["text"], (record.get("metadata") or {}).get("language")))
                    for _ in range(counts[source.name][index]):
                        yield record["text"]

    log(f"training a {config.algorithm} tokenizer with {config.vocab_size:,} tokens on "
        f"{sum(int((counts[n] * sizes[n]).sum()) for n in sizes):,} bytes")  # fmt: skip
    tokenizer = build_tokenizer(config.vocab_size, sample(), config.min_frequency, config.algorithm)
    wrap(tokenizer).save_pretrained(ctx.work)
    ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)

    ctx.stats["algorithm"] = config.algorithm
    ctx.stats["vocab_size"] = tokenizer.get_vocab_size()
    ctx.stats["sources"] = {
        name: {
            "documents": len(sizes[name]),
            "bytes": natural[name],
            "sample_bytes": int((counts[name] * sizes[name]).sum()),
            "passes": round(float((counts[name] * sizes[name]).sum()) / max(trainable[name], 1), 3),
        }
        for name in sizes
    }
    if not held_out:
        log("no held-out documents; fertility not measured")
        return
    ctx.stats["held_out"] = _fertility_row(fertility(tokenizer, [text for text, _ in held_out]))
    languages = sorted({language for _, language in held_out if language})
    if languages:
        ctx.stats["held_out_by_language"] = {
            language: _fertility_row(fertility(tokenizer, [t for t, lang in held_out if lang == language]))
            for language in languages
        }
    # On screen per language too: the summary table stops at 40 rows, which many sources and languages pass.
    for label, row in [("held-out fertility", ctx.stats["held_out"])] + [
        (f"  {language}", row) for language, row in ctx.stats.get("held_out_by_language", {}).items()
    ]:
        log(f"{label}: {row['bytes_per_token']} bytes/token, {row['tokens_per_word']} tokens/word "
            f"({row['documents']:,} documents)")  # fmt: skip


def _fertility_row(measured: dict) -> dict:
    return {key: measured[key] for key in ("documents", "bytes_per_token", "tokens_per_word")}


# ---------------------------------------------------------------------------------------------------------------
# tokenize encode


@dataclass
class TokenizerSource:
    """Where the tokens' tokenizer comes from: a tokenizer artifact or a model's own tokenizer."""

    location: str  # a local directory, or a hub id (model given with `llmforge --online`)
    fingerprint: str | None  # None for a hub tokenizer until it is saved
    refs: list[InputRef]


def resolve_tokenizer(tokenizer: str | Path | None, model: str | Path | None) -> TokenizerSource:
    """The tokenizer to encode with; `--model` and `--tokenizer` together must name the same tokenizer."""
    from llmforge.artifacts import open_artifact
    from llmforge.data.tokenizer import tokenizer_fingerprint
    from llmforge.model.loading import resolve_model, tokenizer_dir

    if tokenizer is None and model is None:
        raise InputError(
            f"{ENCODE_STAGE} needs --tokenizer (made by `llmforge {TRAIN_STAGE}`) or --model (reuse its tokenizer)"
        )
    chosen: TokenizerSource | None = None
    if tokenizer is not None:
        artifact = open_artifact(tokenizer, ENCODE_STAGE, ["tokenizer"])
        recorded = artifact.extra.get("tokenizer_fingerprint")
        if recorded != tokenizer_fingerprint(artifact.path):
            raise InputError(f"{artifact.path}/tokenizer.json: changed since `llmforge {artifact.stage}` wrote it; "
                             "re-run it or use --force there")  # fmt: skip
        chosen = TokenizerSource(str(artifact.path), recorded, [artifact.ref()])
    if model is not None:
        source = resolve_model(model, ENCODE_STAGE)
        fingerprint = source.tokenizer_fingerprint
        if chosen is not None:
            if fingerprint != chosen.fingerprint:
                raise InputError(
                    f"{tokenizer}: not the tokenizer of {model} (tokenizer fingerprint {chosen.fingerprint[:12]}, "
                    f"the model's {(fingerprint or 'unknown')[:12]}); a model must be fed tokens of its own "
                    "tokenizer: drop --tokenizer to reuse the model's"
                )
            chosen.refs.append(source.ref())
        else:
            chosen = TokenizerSource(tokenizer_dir(source), fingerprint, [source.ref()])
    return chosen


def copy_tokenizer(source: TokenizerSource, destination: Path) -> str:
    """Put the tokenizer files in `destination` (OUT/tokenizer) and return their fingerprint."""
    from llmforge.data.tokenizer import tokenizer_fingerprint
    from llmforge.model.loading import TOKENIZER_FILES

    directory = Path(source.location)
    destination.mkdir(parents=True, exist_ok=True)
    if directory.is_dir():
        if not (directory / "tokenizer.json").is_file():
            raise InputError(
                f"{directory}: no tokenizer.json; {ENCODE_STAGE} needs a fast (tokenizers) tokenizer"
            )
        for name in TOKENIZER_FILES:
            if (directory / name).is_file():
                shutil.copy2(directory / name, destination / name)
    else:  # a hub model: its tokenizer, saved the way transformers writes it
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(source.location).save_pretrained(destination)
    fingerprint = tokenizer_fingerprint(destination)
    if source.fingerprint is not None and fingerprint != source.fingerprint:
        raise InputError(
            f"{directory}: its tokenizer files do not match the fingerprint its manifest records"
        )
    return fingerprint


def encode(inputs: list[str], out: str | Path, tokenizer: str | Path | None = None, model: str | Path | None = None,
           config: EncodeConfig | None = None, force: bool = False) -> Path:  # fmt: skip
    """Encode documents artifacts into a tokens artifact, mixed by weight; returns its path."""
    from llmforge.artifacts import run_stage

    config = config or EncodeConfig()
    tokenizer_source = resolve_tokenizer(tokenizer, model)
    sources, weights = open_sources(inputs, config.weights, ENCODE_STAGE)
    config = _with_weights(config, weights)
    refs = [s.ref() for s in sources] + tokenizer_source.refs
    return run_stage(ENCODE_STAGE, "tokens", config, refs, out,
                     lambda ctx: _encode(ctx, sources, tokenizer_source, config), force=force)  # fmt: skip


def _encode(ctx, sources: list[Source], tokenizer_source: TokenizerSource, config: EncodeConfig) -> None:
    import time

    from transformers import AutoTokenizer

    from llmforge.console import log
    from llmforge.data.shards import dtype_for_vocab
    from llmforge.model.llama import special_ids_of

    fingerprint = copy_tokenizer(tokenizer_source, ctx.work / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(ctx.work / "tokenizer")
    if tokenizer.eos_token_id is None:
        raise InputError(f"{tokenizer_source.location}: the tokenizer has no EOS token to end documents with")
    dtype = dtype_for_vocab(len(tokenizer))
    # The backend exactly as transformers configured it, so shards match `tokenizer(text)["input_ids"]`.
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()

    cache = ctx.work / "checkpoints" / f"encoded-{config.chunk_chars}"
    started = time.perf_counter()
    chunks, reused = encode_sources(sources, backend.to_str(), dtype, tokenizer.eos_token_id, cache, config)
    encoded_tokens = sum(int(_chunk_ends(c)[-1]) for files in chunks for c in files)
    seconds = time.perf_counter() - started
    if reused:
        log(f"re-used {reused} encoded chunks of the interrupted run")
    log(
        f"encoded {encoded_tokens:,} tokens in {seconds:.1f} s ({encoded_tokens / max(seconds, 1e-9):,.0f} tokens/s)"
    )

    splits, mixed = mix(ctx.work, sources, chunks, dtype, tokenizer.eos_token_id, config)
    from llmforge.data.shards import write_index

    index = write_index(ctx.work, dtype, len(tokenizer), special_ids_of(tokenizer), splits,
                        sources=mixed, tokenizer_fingerprint=fingerprint)  # fmt: skip
    shutil.rmtree(ctx.work / "checkpoints")  # the shards hold everything now; no second copy in the artifact
    ctx.extra["tokenizer_fingerprint"] = fingerprint
    ctx.stats["tokens"] = index["splits"]["train"]["tokens"]
    ctx.stats["documents"] = index["splits"]["train"]["documents"]
    ctx.stats["val_tokens"] = index["splits"]["val"]["tokens"]
    ctx.stats["val_documents"] = index["splits"]["val"]["documents"]
    ctx.stats["dtype"] = dtype
    ctx.stats["shards"] = len(splits["train"]) + len(splits["val"])
    ctx.stats["sources"] = mixed
    ctx.stats["encoded_chunks_reused"] = reused


# Encoding: documents -> per-source chunks of tokens in ctx.work/checkpoints (the resume unit)

_WORKER_TOKENIZER = None


def _start_worker(tokenizer_json: str, threads: bool) -> None:
    global _WORKER_TOKENIZER
    if not threads:  # one process per core already; a thread pool inside each would only compete
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json)


def encode_chunk(texts: list[str], directory: Path, number: int, dtype: str, eos_id: int) -> tuple[int, int]:
    """Encode one chunk of documents into `directory/NNNNN.bin` + `.idx` (EOS after each document)."""
    from llmforge.data.shards import ShardWriter

    writer = ShardWriter(
        directory.parent, directory.name, dtype, eos_id, shard_tokens=2**62, first_shard=number
    )
    for encoding in _WORKER_TOKENIZER.encode_batch(texts):
        writer.add(encoding.ids)
    shards = writer.close()
    return len(texts), shards[0]["tokens"]


def _chunks(texts, chunk_chars: int):
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chunk_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _chunk_ends(path: Path):
    import numpy as np

    return np.fromfile(path.with_suffix(".idx"), dtype=np.uint64)


def encode_sources(sources: list[Source], tokenizer_json: str, dtype: str, eos_id: int, cache: Path,
                   config: EncodeConfig) -> tuple[list[list[Path]], int]:  # fmt: skip
    """Encode every source into chunk files under `cache`, in parallel; chunks already there are kept.

    Returns the chunk files of each source in document order, and how many were re-used.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from llmforge.console import progress
    from llmforge.data.documents import count_documents, iter_texts

    workers = config.workers or machine.cpu_count()
    pool = None
    if workers > 1:  # spawn: safe with the tokenizers thread pool, and the same on every platform
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(tokenizer_json, False))  # fmt: skip
    else:
        _start_worker(tokenizer_json, threads=True)
    chunks: list[list[Path]] = []
    reused = 0
    pending: set = set()
    try:
        with progress() as bar:
            task = bar.add_task(
                "encoding", total=sum(count_documents(s.artifact) for s in sources), unit="docs"
            )

            def finished(futures) -> None:
                for future in futures:
                    bar.advance(task, future.result()[0])

            for number, source in enumerate(sources):
                directory = cache / f"{number:03d}-{source.artifact.fingerprint[:16]}"
                directory.mkdir(parents=True, exist_ok=True)
                files = []
                for chunk_number, texts in enumerate(
                    _chunks(iter_texts(source.artifact), config.chunk_chars)
                ):
                    path = directory / f"{chunk_number:05d}.bin"
                    files.append(path)
                    if path.is_file():  # written last, by rename: the chunk is complete
                        reused += 1
                        bar.advance(task, len(texts))
                        continue
                    args = (texts, directory, chunk_number, dtype, eos_id)
                    if pool is None:
                        bar.advance(task, encode_chunk(*args)[0])
                        continue
                    pending.add(pool.submit(encode_chunk, *args))
                    if len(pending) >= 2 * workers:  # keep memory bounded: read ahead only a little
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        finished(done)
                chunks.append(files)
            finished(wait(pending).done)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return chunks, reused


# Mixing: chunks -> shuffled train shards by weight, plus the held-out validation split


def mix(root: Path, sources: list[Source], chunks: list[list[Path]], dtype: str, eos_id: int,
        config: EncodeConfig) -> tuple[dict[str, list[dict]], dict[str, dict]]:  # fmt: skip
    """Write `root/train` (mixed by weight, documents shuffled) and `root/val`; returns the shard lists and
    what each source contributed."""
    import numpy as np

    from llmforge.console import progress, warn
    from llmforge.data.mixture import budgets, draw, hold_out
    from llmforge.data.shards import ShardWriter

    rng = np.random.default_rng(config.seed)
    maps, chunk_of, starts, lengths, owner = [], [], [], [], []
    for number, files in enumerate(chunks):
        for path in files:
            ends = _chunk_ends(path).astype(np.int64)
            chunk_of.append(np.full(len(ends), len(maps)))
            starts.append(ends - np.diff(ends, prepend=0))
            lengths.append(np.diff(ends, prepend=0))
            owner.append(np.full(len(ends), number))
            maps.append(np.memmap(path, dtype=dtype, mode="r"))
    chunk_of, starts, lengths, owner = (np.concatenate(a) for a in (chunk_of, starts, lengths, owner))

    is_val = np.zeros(len(lengths), dtype=bool)
    natural = {}
    for number, source in enumerate(sources):
        mine = np.flatnonzero(owner == number)
        is_val[mine] = hold_out(lengths[mine], config.val_fraction, rng)
        natural[source.name] = int(lengths[mine][~is_val[mine]].sum())
    target = budgets(natural, config.weights, config.target_tokens)
    available = sum(natural.values())
    if config.target_tokens and config.target_tokens > available:
        # Asked for, so done; but pretrain repeats the data in epochs without copies on disk.
        warn(f"target_tokens {config.target_tokens:,} is {config.target_tokens / max(available, 1):.1f} times the "
             f"{available:,} training tokens the inputs hold: the shards store the data that many times over. "
             "To train on more tokens than the data holds, leave target_tokens unset (weights alone set the mix) "
             "and set pretrain's train_tokens: it repeats the data in epochs")  # fmt: skip
    counts = np.zeros(len(lengths), dtype=np.int64)
    for number, source in enumerate(sources):
        train_docs = np.flatnonzero((owner == number) & ~is_val)
        counts[train_docs] = draw(lengths[train_docs], target[source.name], rng)

    mixed = {}
    total = int((counts * lengths).sum())
    for number, source in enumerate(sources):
        mine = owner == number
        tokens = int((counts[mine] * lengths[mine]).sum())
        passes = tokens / max(natural[source.name], 1)
        mixed[source.name] = {
            "weight": round(target[source.name] / max(sum(target.values()), 1), 6),
            "tokens": tokens,
            "share": round(tokens / max(total, 1), 6),
            "natural_tokens": natural[source.name],
            "passes": round(passes, 4),
            "max_repeats": int(counts[mine].max()) if mine.any() else 0,
            "documents": int(counts[mine].sum()),
            "val_tokens": int(lengths[mine & is_val].sum()),
        }
        if passes > USEFUL_PASSES:
            warn(f"{source.name} is repeated {passes:.1f} times; beyond about {USEFUL_PASSES} passes repeated "
                 "data helps little: lower its weight or the target, or add data")  # fmt: skip

    order = rng.permutation(np.repeat(np.arange(len(lengths)), counts))
    splits = {}
    for split in ("train", "val"):
        shutil.rmtree(root / split, ignore_errors=True)  # left by an interrupted run: rewritten whole
    with progress() as bar:
        for split, documents in (("train", order), ("val", np.flatnonzero(is_val))):
            writer = ShardWriter(root, split, dtype, eos_id, shard_tokens=config.shard_tokens)
            task = bar.add_task(f"writing {split}", total=int(lengths[documents].sum()), unit="tokens")
            for document in documents:
                start = starts[document]
                end = start + lengths[document] - 1  # the chunk's EOS; the writer adds it back
                writer.add(maps[chunk_of[document]][start:end])
                bar.advance(task, int(lengths[document]))
            splits[split] = writer.close()
    return splits, mixed


# ---------------------------------------------------------------------------------------------------------------
# Command line

Inputs = Annotated[
    list[str],
    typer.Argument(
        help="Documents artifacts, each as [NAME=]DIR[:WEIGHT], e.g. web=docs/web:0.7 wiki=docs/wiki:0.3."
    ),
]
TRAIN_FLAGS = (Flag("vocab_size"), Flag("algorithm"), Flag("sample_bytes"))
ENCODE_FLAGS = (Flag("target_tokens"), Flag("val_fraction"), Flag("workers"))


@stage_command(TRAIN_FLAGS)
def train_command(inputs: Inputs, output: Path, config: TrainConfig, force: bool = False) -> None:
    """Train a tokenizer (byte-level BPE or Unigram, special tokens, chat template) on a weighted sample."""
    train(inputs, output, config, force=force)


@stage_command(ENCODE_FLAGS)
def encode_command(
    inputs: Inputs,
    output: Path,
    config: EncodeConfig,
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="A tokenizer artifact (made by `llmforge tokenize train`)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Reuse the tokenizer of this model (continued pretraining, fine-tuning data)."
        ),
    ] = None,
    force: bool = False,
) -> None:
    """Encode documents into token shards (EOS after each document, a validation split), mixed by weight."""
    encode(inputs, output, tokenizer=tokenizer, model=model, config=config, force=force)
