"""Train the tokenizer on the data mix, then encode documents into token shards with that mix.

Reads documents artifacts, each optionally named and weighted (`web=docs/web:0.7 wiki=docs/wiki:0.3`); `encode`
also a tokenizer artifact (`--tokenizer`) or a model whose tokenizer it reuses (`--model`).
Writes:
- `tokenize train`: a tokenizer artifact, byte-level BPE (or SentencePiece-style Unigram) with special tokens
  reserved from the start and a ChatML template, as Hugging Face files at the artifact's root; the fertility on
  held-out documents in its stats.
- `tokenize encode`: a tokens artifact (llmforge/data/shards.py): every document followed by EOS, document
  boundaries kept, a held-out validation split, and the inputs mixed by weight.
Settings: `TrainConfig` and `EncodeConfig` below.
The work: `tokenizers`' BPE / Unigram trainers (data/tokenizer.build_tokenizer) on a sample drawn by weight
(data/mixture.py); tiktoken (where it maps the tokenizer exactly and gives the same ids on a sample:
data/tiktoken_bpe.py) or `tokenizers`' encode_batch in parallel, resumable by chunk, then the mix into shards
(data/encode.encode_sources and mix).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NotRequired, TypedDict

import typer
from pydantic import Field

from llmforge.artifacts import Artifact, InputRef
from llmforge.config import StageConfig, runtime_field
from llmforge.errors import InputError
from llmforge.options import Flag, stage_command

TRAIN_STAGE = "tokenize train"
ENCODE_STAGE = "tokenize encode"
# Held-out text for the fertility report never takes more than this share of an input's documents.
HELD_OUT_SHARE = 0.1
# tiktoken encodes only after it gave tokenizers' ids on this many of the first documents of every input.
CHECK_DOCUMENTS = 64
CHECK_CHARS = 1_000_000  # per input, at most

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
    fim_tokens: bool = Field(
        False,
        description="Also reserve the fill-in-the-middle sentinels <|fim_prefix|>, <|fim_middle|>, <|fim_suffix|> "
        "(for `tokenize encode --fim-rate`: code models)",
    )


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
    workers: int = runtime_field(
        0,
        ge=0,
        description="Threads (tiktoken) or processes (tokenizers) encoding in parallel; 0 = one per CPU core",
    )
    chunk_chars: int = runtime_field(
        2_000_000,
        gt=0,
        description="Characters of text per encoding task; an interrupted run keeps finished tasks",
    )
    encoder: Literal["auto", "tiktoken", "tokenizers"] = runtime_field(
        "auto",
        description="What encodes: tiktoken (several times faster) where it maps the tokenizer exactly and gives "
        "the same ids on the first documents of each input, else tokenizers; auto = tiktoken where it can",
    )
    special_tokens: Literal["text", "control"] = Field(
        "text",
        description="Special-token strings found in documents (<|im_start|>, the EOS string): text = encoded as "
        "the text they are, so a crawled page cannot inject control tokens; control = as the special tokens "
        "(documents rendered with the chat template on purpose). Tag tokens such as <think> match either way",
    )
    fim_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the training documents rewritten for fill-in-the-middle (code models: 0.5 as in "
        "StarCoder); needs a tokenizer with FIM tokens (tokenize train --fim-tokens); 0 = off",
    )
    fim_spm_rate: float = Field(
        0.5, ge=0, le=1, description="Of those, the share in SPM order (suffix first) rather than PSM"
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
    encoder: str  # tiktoken or tokenizers (the same ids either way)
    fim: NotRequired[FimStats]  # with --fim-rate


class FimStats(TypedDict):
    rate: float
    spm_rate: float
    documents: int  # training documents rewritten (each copy of a repeated one drawn on its own)
    spm: int  # of them, in SPM order
    skipped: int  # drawn but left whole: they do not decode back to their own tokens


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
    minimum = minimum_vocab_size(config.fim_tokens)
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
    tokenizer = build_tokenizer(config.vocab_size, sample(), config.min_frequency, config.algorithm,
                                config.fim_tokens)  # fmt: skip
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
        try:
            artifact = open_artifact(tokenizer, ENCODE_STAGE, ["tokenizer"])
        except InputError as exc:
            model_given = model is None and (Path(tokenizer) / "config.json").is_file()
            hint = (
                f"; to encode with a model's own tokenizer, pass --model {tokenizer}" if model_given else ""
            )
            raise InputError(f"{exc}{hint}") from None
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
    if (config.encoder == "tiktoken" or config.fim_rate) and Path(tokenizer_source.location).is_dir():
        loaded, tokenizer_json = _backend(Path(tokenizer_source.location))  # loaded once for both checks
        if config.encoder == "tiktoken":  # refused before any output
            _refuse_unmappable(tokenizer_json, tokenizer_source)
        if config.fim_rate:
            _fim_sentinels(loaded, tokenizer_source)
    refs = [s.ref() for s in sources] + tokenizer_source.refs
    return run_stage(ENCODE_STAGE, "tokens", config, refs, out,
                     lambda ctx: _encode(ctx, sources, tokenizer_source, config), force=force)  # fmt: skip


def _encode(ctx, sources: list[Source], tokenizer_source: TokenizerSource, config: EncodeConfig) -> None:
    import time

    from llmforge.console import log
    from llmforge.data.encode import encode_sources, mix
    from llmforge.data.shards import dtype_for_vocab, write_index
    from llmforge.model.llama import special_ids_of

    fingerprint = copy_tokenizer(tokenizer_source, ctx.work / "tokenizer")
    tokenizer, tokenizer_json = _backend(ctx.work / "tokenizer")
    if tokenizer.eos_token_id is None:
        raise InputError(f"{tokenizer_source.location}: the tokenizer has no EOS token to end documents with")
    dtype = dtype_for_vocab(len(tokenizer))

    started = time.perf_counter()
    control_tokens = config.special_tokens == "control"
    encoder = _choose_encoder(config.encoder, tokenizer_json, sources, tokenizer_source, control_tokens)
    cache = ctx.work / "checkpoints" / f"encoded-{config.chunk_chars}-{config.special_tokens}"
    encoded = encode_sources([s.artifact for s in sources], tokenizer_json, dtype, tokenizer.eos_token_id, cache,
                             workers=config.workers, chunk_chars=config.chunk_chars, encoder=encoder,
                             control_tokens=control_tokens)  # fmt: skip
    seconds = time.perf_counter() - started
    if encoded.reused:
        log(f"re-used {encoded.reused} encoded chunks of the interrupted run")
    log(f"encoded {encoded.tokens:,} tokens in {seconds:.1f} s ({encoded.tokens / max(seconds, 1e-9):,.0f} "
        f"tokens/s, {encoder})")  # fmt: skip

    fim = None
    if config.fim_rate:
        from llmforge.data.encode import make_encoder
        from llmforge.data.fim import FillInTheMiddle

        # the backend's own decode: transformers' around it takes twice as long
        def decode(ids: list[int]) -> str:
            return tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=False)

        fim = FillInTheMiddle(decode, make_encoder(tokenizer_json, encoder, control_tokens),
                              _fim_sentinels(tokenizer, tokenizer_source), config.fim_rate, config.fim_spm_rate)  # fmt: skip
    splits, mixed = mix(ctx.work, [s.name for s in sources], encoded.files, dtype, tokenizer.eos_token_id,
                        weights=config.weights, target_tokens=config.target_tokens,
                        val_fraction=config.val_fraction, shard_tokens=config.shard_tokens, seed=config.seed,
                        fim=fim)  # fmt: skip
    if fim is not None:
        ctx.stats["fim"] = fim.stats()
        log(f"fill-in-the-middle: {fim.rewritten:,} of {fim.documents:,} training documents rewritten "
            f"({fim.spm:,} in SPM order)" + (f", {fim.skipped:,} left whole" if fim.skipped else ""))  # fmt: skip
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
    ctx.stats["encoded_chunks_reused"] = encoded.reused
    ctx.stats["encoder"] = encoder


def _fim_sentinels(tokenizer, tokenizer_source) -> tuple[int, int, int]:
    from llmforge.data.fim import SPELLINGS, sentinel_ids

    found = sentinel_ids(tokenizer.get_vocab())
    if found is None:
        raise InputError(f"{tokenizer_source.location}: --fim-rate needs fill-in-the-middle tokens "
                         f"({', '.join(SPELLINGS[0])}, or StarCoder's {', '.join(SPELLINGS[1])}); the tokenizer has "
                         "none: train one with `llmforge tokenize train --fim-tokens`")  # fmt: skip
    return found


def _backend(directory: Path):
    """The transformers tokenizer in `directory` and its `tokenizers` backend serialized exactly as transformers
    configured it (no truncation, no padding), so that shards match `tokenizer(text)["input_ids"]`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    return tokenizer, backend.to_str()


def _refuse_unmappable(tokenizer_json: str, tokenizer_source: TokenizerSource) -> None:
    from llmforge.data.tiktoken_bpe import Unmappable, plan

    try:
        plan(tokenizer_json).encoding()
    except Unmappable as error:
        _refuse(f"tiktoken cannot encode this tokenizer exactly: {error}", tokenizer_source)


def _refuse(why: str, tokenizer_source: TokenizerSource) -> None:
    raise InputError(f"{tokenizer_source.location}/tokenizer.json: --encoder tiktoken: {why}; "
                     "use --encoder auto or tokenizers")  # fmt: skip


def _choose_encoder(requested: str, tokenizer_json: str, sources: list[Source],
                    tokenizer_source: TokenizerSource, control_tokens: bool) -> str:  # fmt: skip
    """tiktoken where it maps the tokenizer and gives `tokenizers`' ids on the first documents of every input;
    `tokenizers` otherwise (one line says why), or an error where tiktoken was asked for."""
    from itertools import islice

    from llmforge.console import log
    from llmforge.data.documents import iter_texts
    from llmforge.data.tiktoken_bpe import choose

    if requested == "tokenizers":
        return requested
    sample = []
    for source in sources:
        chars, texts = 0, iter_texts(source.artifact)
        for text in islice(texts, CHECK_DOCUMENTS):
            sample.append(text[: CHECK_CHARS - chars])
            chars += len(sample[-1])
            if chars >= CHECK_CHARS:
                break
        texts.close()
    encoder, why_not = choose(requested, tokenizer_json, sample, control_tokens)
    if why_not and requested == "tiktoken":
        _refuse(why_not, tokenizer_source)
    if why_not:
        log(f"encoding with tokenizers: {why_not}")
    return encoder


# ---------------------------------------------------------------------------------------------------------------
# Command line

Inputs = Annotated[
    list[str],
    typer.Argument(
        help="Documents artifacts, each as [NAME=]DIR[:WEIGHT], e.g. web=docs/web:0.7 wiki=docs/wiki:0.3."
    ),
]
TRAIN_FLAGS = (Flag("vocab_size"), Flag("algorithm"), Flag("sample_bytes"), Flag("fim_tokens"))
ENCODE_FLAGS = (
    Flag("target_tokens"),
    Flag("val_fraction"),
    Flag("workers"),
    Flag("encoder"),
    Flag("special_tokens"),
    Flag("fim_rate"),
)


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
