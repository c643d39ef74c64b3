"""Turn a raw web crawl into clean documents: HTML to text, URL blocklist, language ID, quality rules, PII.

Reads WARC (HTML extracted with Trafilatura), JSONL, Parquet and plain-text files, local or behind fsspec URLs, and
writes a documents artifact. Every filter is a datatrove block that can be switched off or tuned; the manifest
counts what each one received and removed, and OUT/removed/<filter>/ keeps a sample of what it removed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Literal, NotRequired, TypedDict

import typer
from pydantic import Field

from llmforge.config import StageConfig, runtime_field
from llmforge.data.documents import shard_mb_field
from llmforge.data.executors import ExecutorSettings, FilterCounts
from llmforge.data.sources import InputSettings
from llmforge.options import Flag, split_list, stage_command

STAGE = "crawl-filter"


class ExtractSettings(StageConfig):
    favour_precision: bool = Field(True, description="Trafilatura: prefer less text over boilerplate")
    deduplicate: bool = Field(
        False,
        description="Trafilatura's own dedup of repeated text segments (off: its cache lives in each worker, so the "
        "output would depend on how pages are spread over workers; the dedup stage removes duplicates)",
    )
    timeout: float = Field(
        1.0, gt=0, description="Seconds Trafilatura may spend on one page before it is dropped"
    )


class UrlFilterSettings(StageConfig):
    enabled: bool = Field(
        True, description="Drop pages whose URL is on a blocklist (documents without URL pass)"
    )
    bundled_lists: bool = Field(
        True,
        description="Use datatrove's bundled blocklists (4.5M adult/spam domains, banned URL words; offline, "
        "about 10 s and 0.5 GB to load per worker)",
    )
    extra_domains: list[str] = Field(default_factory=list, description="More domains to block")
    extra_urls: list[str] = Field(default_factory=list, description="More exact URLs to block")
    banned_words: list[str] = Field(
        default_factory=list, description="More words that block a URL containing them"
    )


class LanguageSettings(StageConfig):
    languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="Languages to keep (ISO 639-1 codes: en,de,...); empty (--languages all) keeps every language but "
        "still labels it",
    )
    min_confidence: float = Field(
        0.65,
        ge=0,
        le=1,
        description="Minimum language probability to keep a document (seed and FineWeb: 0.65)",
    )
    fasttext_model: str | None = Field(
        None,
        description="A fastText language-ID model file (e.g. lid.176.bin) to use through datatrove's LanguageFilter "
        "instead of py3langid, whose model ships in its wheel; labels must be __label__<code>",
    )


class GopherRepetitionSettings(StageConfig):
    enabled: bool = Field(True, description="Gopher repetition rules (Rae et al. 2021, table A1)")
    dup_line_frac: float = Field(
        0.2, description="Max share of duplicated lines (seed: 20%; Gopher and datatrove: 0.3)"
    )
    dup_para_frac: float = Field(0.3, description="Max share of duplicated paragraphs (Gopher: 0.3)")
    dup_line_char_frac: float = Field(
        0.2, description="Max share of characters in duplicated lines (Gopher: 0.2)"
    )
    dup_para_char_frac: float = Field(
        0.2, description="Max share of characters in duplicated paragraphs (Gopher: 0.2)"
    )


class GopherQualitySettings(StageConfig):
    enabled: bool = Field(True, description="Gopher quality rules (length, word length, symbols, stop words)")
    min_doc_words: int = Field(100, description="Min words (seed: 100; Gopher and datatrove: 50)")
    max_doc_words: int = Field(100_000, description="Max words (seed, Gopher and datatrove: 100,000)")
    min_avg_word_length: float = Field(3, description="Min mean word length (Gopher: 3)")
    max_avg_word_length: float = Field(10, description="Max mean word length (Gopher: 10)")
    max_symbol_word_ratio: float = Field(0.1, description="Max '#' or '...' per word (Gopher: 0.1)")
    max_bullet_lines_ratio: float = Field(
        0.9, description="Max share of lines starting with a bullet (Gopher: 0.9)"
    )
    max_ellipsis_lines_ratio: float = Field(
        0.3, description="Max share of lines ending in '...' (Gopher: 0.3)"
    )
    max_non_alpha_words_ratio: float = Field(
        0.8,
        description="At least this share of words must contain a letter: the seed's 'at most 20% non-alphabetic' "
        "measured per word as Gopher does (datatrove's name for it; default 0.8 everywhere)",
    )
    min_stop_words: int = Field(
        2, description="Min stop words (Gopher's 8 for English, spaCy's list for other languages)"
    )


class C4Settings(StageConfig):
    enabled: bool = Field(True, description="C4 quality rules (Raffel et al. 2020), as FineWeb applies them")
    filter_no_terminal_punct: bool = Field(
        False,
        description="Drop lines without terminal punctuation (C4 and datatrove: on; FineWeb turned it off: it "
        "deletes headings and list items from good pages)",
    )
    min_num_sentences: int = Field(5, description="Min sentences left after line filtering (-1 disables)")
    min_words_per_line: int = Field(3, description="Drop lines with fewer words (-1 disables)")
    max_word_length: int = Field(1000, description="Drop lines with a longer word (-1 disables)")
    filter_lorem_ipsum: bool = Field(True, description="Drop pages containing 'lorem ipsum'")
    filter_javascript: bool = Field(True, description="Drop lines mentioning javascript")
    filter_curly_bracket: bool = Field(True, description="Drop pages containing '{' (code, templates)")
    filter_policy: bool = Field(True, description="Drop lines about cookies, privacy policy, terms of use")
    paragraphs: bool = Field(
        False, description="Also mC4's paragraph rule: at least 3 lines of 200+ characters"
    )
    min_paragraphs: int = Field(3, description="Paragraph rule: lines needed")
    min_paragraph_length: int = Field(200, description="Paragraph rule: characters per line")


class FineWebSettings(StageConfig):
    enabled: bool = Field(
        True, description="FineWeb quality rules (Penedo et al. 2024), datatrove's defaults"
    )
    line_punct_thr: float = Field(0.12, description="Min share of lines ending in punctuation")
    short_line_thr: float = Field(0.67, description="Max share of short lines")
    short_line_length: int = Field(30, description="A line this long or shorter is short")
    char_duplicates_ratio: float = Field(0.01, description="Max share of characters in duplicated lines")
    new_line_ratio: float = Field(0.3, description="Max newlines per word (lists)")


class PIISettings(StageConfig):
    mode: Literal["redact", "drop", "off"] = Field(
        "redact",
        description="redact: replace PII by <EMAIL>, <IP_ADDRESS>, <SSN>, ...; drop: remove the document",
    )
    kinds: list[Literal["email", "ip", "phone", "credit_card", "ssn"]] = Field(
        default_factory=lambda: ["email", "ip", "phone", "credit_card"],
        description="What counts as PII: emails (the domain must end in a real top-level domain), payment cards "
        "(Luhn check), public IP addresses, phone numbers; `ssn` (US social security numbers, 123-45-6789) is "
        "opt-in",
    )
    public_ips_only: bool = Field(
        True, description="Only public IP addresses identify someone (datatrove's rule)"
    )


class Config(StageConfig):
    input: InputSettings = Field(default_factory=InputSettings, description="How raw files are read")
    extract: ExtractSettings = Field(default_factory=ExtractSettings, description="HTML to text (WARC)")
    url_filter: UrlFilterSettings = Field(default_factory=UrlFilterSettings, description="URL blocklist")
    language: LanguageSettings = Field(
        default_factory=LanguageSettings, description="Language identification"
    )
    gopher_repetition: GopherRepetitionSettings = Field(
        default_factory=GopherRepetitionSettings, description="Repetition rules"
    )
    gopher_quality: GopherQualitySettings = Field(
        default_factory=GopherQualitySettings, description="Quality rules"
    )
    c4: C4Settings = Field(default_factory=C4Settings, description="C4 rules")
    fineweb: FineWebSettings = Field(default_factory=FineWebSettings, description="FineWeb rules")
    pii: PIISettings = Field(default_factory=PIISettings, description="Personal data")
    removed_sample: int = Field(
        100,
        ge=-1,
        description="Removed documents kept per filter and task in OUT/removed/ (-1: all, 0: none)",
    )
    shard_mb: float = shard_mb_field()
    executor: ExecutorSettings = runtime_field(
        ExecutorSettings(), description="Where the pipeline runs (does not change the output)"
    )


class InputCounts(TypedDict):
    files: int
    records: int  # in the local files: WARC records, JSONL lines, rows
    documents: int  # that the readers made of them
    remote_files: NotRequired[int]  # of the files, those on remote storage (their records are not counted)


class Stats(TypedDict):
    """What crawl-filter writes in its manifest's stats (read by `llmforge card`)."""

    input: InputCounts
    filters: dict[str, FilterCounts]  # per block, in pipeline order (extract, url_filter, language, ...)
    documents: int  # written
    removed: int
    languages_detected: NotRequired[dict[str, int]]  # top ten among documents reaching the language filter
    pii_redacted: NotRequired[dict[str, int]]  # `documents` redacted, and redactions per kind (email, ip...)


# ---------------------------------------------------------------------------------------------------------------
# Quality filters for one language (module-level so datatrove workers can unpickle them)


def _gopher_repetition(settings: dict, language: str):
    from datatrove.pipeline.filters import GopherRepetitionFilter

    return GopherRepetitionFilter(**settings, language=language)


def _gopher_quality(settings: dict, language: str):
    from datatrove.pipeline.filters import GopherQualityFilter

    from llmforge.data.blocks import stop_words

    words = stop_words(language)
    settings = {**settings, "min_stop_words": settings["min_stop_words"] if words != [] else None}
    return GopherQualityFilter(**settings, stop_words=words, language=language)


def _c4_quality(settings: dict, language: str):
    from datatrove.pipeline.filters import C4QualityFilter

    return C4QualityFilter(**settings, language=language)


def _fineweb_quality(settings: dict, language: str):
    from datatrove.pipeline.filters import FineWebQualityFilter

    return FineWebQualityFilter(**settings, language=language)


def plan(groups: list, config: Config):
    """The tasks (llmforge.data.parts): WARC pages first, so Trafilatura sees only HTML; the other readers append
    their documents after it."""
    from llmforge.data.parts import plan_tasks

    ordered = sorted(groups, key=lambda g: g[0] != "warc")
    return plan_tasks([(fmt, paths, config.input) for fmt, paths in ordered], config.input.task_mb)


def build_pipeline(groups: list, config: Config, work: Path, tasks=None) -> tuple[list, list[str]]:
    """The datatrove pipeline and, aligned with its blocks, the name each block has in the stats; `tasks`: the
    plan(groups, config) already made."""
    from datatrove.pipeline.filters import C4ParagraphFilter

    from llmforge.data import blocks, pii

    tasks = tasks or plan(groups, config)

    def removed(name: str):
        return (
            blocks.SampleWriter(str(work / "removed" / name), config.removed_sample)
            if config.removed_sample
            else None
        )

    steps: list[tuple[str, object]] = []
    for group, reader in zip(tasks.groups, tasks.readers(), strict=True):
        fmt = group.format
        steps.append((f"read_{fmt}", reader))
        if fmt == "warc" and not any(name == "extract" for name, _ in steps):
            steps.append(("extract", blocks.Trafilatura(favour_precision=config.extract.favour_precision,
                                                 timeout=config.extract.timeout,
                                                 deduplicate=config.extract.deduplicate)))  # fmt: skip
    url = config.url_filter
    if url.enabled:
        steps.append(("url_filter", blocks.OfflineURLFilter(
            use_integrated_lists=url.bundled_lists, extra_domains=url.extra_domains or None,
            extra_urls=url.extra_urls or None, banned_words=url.banned_words or None,
            exclusion_writer=removed("url_filter"))))  # fmt: skip
    lang = config.language
    if lang.fasttext_model:
        identify = blocks.fasttext_language_filter(lang.fasttext_model, lang.languages, lang.min_confidence,
                                                   removed("language"))  # fmt: skip
    else:
        identify = blocks.Py3LangIdFilter(lang.languages, lang.min_confidence, removed("language"))
    steps.append(("language", identify))
    quality = (
        ("gopher_repetition", config.gopher_repetition, _gopher_repetition),
        ("gopher_quality", config.gopher_quality, _gopher_quality),
        ("c4_quality", config.c4, _c4_quality),
        ("fineweb_quality", config.fineweb, _fineweb_quality),
    )
    for name, settings, make in quality:
        if settings.enabled:
            kwargs = settings.model_dump(
                exclude={"enabled", "paragraphs", "min_paragraphs", "min_paragraph_length"}
            )
            steps.append((name, blocks.PerLanguage(name, partial(make, kwargs), removed(name))))
        if name == "c4_quality" and config.c4.paragraphs:
            paragraphs = C4ParagraphFilter(exclusion_writer=removed("c4_paragraphs"))
            paragraphs.min_paragraphs = config.c4.min_paragraphs
            paragraphs.min_paragraph_len = config.c4.min_paragraph_length
            steps.append(("c4_paragraphs", paragraphs))
    if config.pii.mode == "redact":
        steps.append(("pii", pii.PIIRedactor(config.pii.kinds, config.pii.public_ips_only)))
    elif config.pii.mode == "drop":
        steps.append(("pii", pii.PIIFilter(config.pii.kinds, config.pii.public_ips_only, removed("pii"))))
    steps.append(("write", blocks.DocumentWriter(str(work / "data"), config.shard_mb)))
    return [block for _, block in steps], [name for name, _ in steps]


# ---------------------------------------------------------------------------------------------------------------
# The stage


def run(inputs: list[str], out: str | Path, config: Config | None = None, force: bool = False) -> Path:
    """Filter raw crawl files into a documents artifact; returns its path."""
    from llmforge.artifacts import run_stage
    from llmforge.data.executors import check_executor
    from llmforge.data.sources import resolve_raw_inputs

    config = config or Config()
    if not inputs:
        from llmforge.errors import InputError

        raise InputError(f"{STAGE} needs at least one input file, folder, glob or URL")
    check_executor(config.executor)
    raw = resolve_raw_inputs(inputs, config.input, STAGE)
    refs = list(raw.refs)
    if config.language.fasttext_model:
        refs.append(lid_model_input(config.language.fasttext_model))
    return run_stage(
        STAGE, "documents", config, refs, out, lambda ctx: _filter(ctx, raw, config), force=force
    )


FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")  # the first four bytes of every .bin / .ftz model


def lid_model_input(path: str):
    """A user's fastText language-ID model, checked before any work (a wrong path would otherwise fail inside
    every datatrove worker) and fingerprinted by content: it decides which documents survive."""
    from llmforge.artifacts import raw_input
    from llmforge.errors import InputError

    file = Path(path)
    if not file.is_file():
        raise InputError(f"--lid-model {path}: no such file (a local fastText model such as lid.176.bin)")
    with open(file, "rb") as handle:
        if handle.read(4) != FASTTEXT_MAGIC:
            raise InputError(f"--lid-model {path}: not a fastText model file (no fastText header)")
    ref = raw_input(path)
    ref.detail["role"] = "language-id model"
    return ref


def _filter(ctx, raw, config: Config) -> None:
    import shutil

    from llmforge.console import log, warn
    from llmforge.data.executors import Step, filter_counts, run_steps, step_stats
    from llmforge.data.parts import split_note
    from llmforge.data.sources import reader_groups

    groups = reader_groups(raw.files)
    planned = plan(groups, config)
    tasks = planned.tasks
    names: list[str] = []

    def build() -> list:
        pipeline, labels = build_pipeline(groups, config, ctx.work, planned)
        names[:] = labels
        return pipeline

    languages = ",".join(config.language.languages) or "all"
    log(f"{STAGE}: {len(raw.files)} files ({', '.join(f'{n} {f}' for f, n in raw.by_format.items())}), "
        f"{tasks} tasks{split_note(planned)}, languages {languages}, PII {config.pii.mode}")  # fmt: skip
    run_steps([Step("filter", build, tasks)], config.executor, ctx.work / "logs", STAGE, ctx.fingerprint)

    blocks = list(zip(names, step_stats(ctx.work / "logs" / "filter"), strict=True))
    read = sum(int(c.get("documents", 0)) for name, c in blocks if name.startswith("read_"))
    counters = {name: c for name, c in blocks if not name.startswith("read_")}
    written = int(counters["write"].get("total", 0))
    stats: dict = {"input": {"files": len(raw.files), "records": raw.records, "documents": read}}
    if raw.remote_files:
        stats["input"]["remote_files"] = raw.remote_files
    filters = {}
    for name, counter in counters.items():
        if name == "write" or (name == "pii" and config.pii.mode == "redact"):
            continue
        row = filter_counts(counter)
        if name == "extract":  # an extractor drops empty extractions and skips pages that time out or fail
            row["removed"] = row["in"] - row["out"]
            reasons = {
                "empty": "dropped",
                "timeout": "timeout",
                "error": "clean_error",
                "crashed": "broken_process",
            }
            row["reasons"] = {name: int(counter[key]) for name, key in reasons.items() if counter.get(key)}
            if not row["reasons"]:
                del row["reasons"]
        filters[name] = row
    stats["filters"] = filters
    stats["documents"] = written
    stats["removed"] = read - written
    detected = {k.removeprefix("language_"): int(v) for k, v in counters["language"].items()
                if k.startswith("language_")}  # fmt: skip
    if detected:
        stats["languages_detected"] = dict(sorted(detected.items(), key=lambda kv: -kv[1])[:10])
    if config.pii.mode == "redact":
        pii = counters["pii"]
        stats["pii_redacted"] = {"documents": int(pii.get("documents_redacted", 0)),
                                 **{k.removeprefix("redacted_"): int(v) for k, v in pii.items()
                                    if k.startswith("redacted_")}}  # fmt: skip
    ctx.stats.update(stats)
    shutil.rmtree(ctx.work / "checkpoints", ignore_errors=True)
    timeouts = filters.get("extract", {}).get("reasons", {}).get("timeout", 0)
    if timeouts:
        warn(f"{timeouts} pages took longer than extract.timeout ({config.extract.timeout:g} s) in Trafilatura and "
             "were dropped; on a busy machine raise it (--set extract.timeout=5)")  # fmt: skip
    if written == 0:
        warn("every document was removed; see the per-filter counts and the samples in removed/")


# ---------------------------------------------------------------------------------------------------------------
# Command line


FLAGS = (
    Flag("language.languages", convert=lambda value: [] if value == "all" else split_list(value)),
    Flag("language.min_confidence"),
    Flag("language.fasttext_model", "--lid-model"),
    Flag("pii.mode", "--pii"),
    Flag("input.text_field"),
    Flag("input.format", "--input-format"),
    Flag("input.task_mb"),
    Flag("executor.workers"),
    Flag("executor.kind", "--executor"),
)


@stage_command(FLAGS)
def command(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="WARC(.gz), JSONL (.gz, .zst), Parquet or .txt files, folders, globs or fsspec URLs."
        ),
    ],
    output: Path,
    config: Config,
    force: bool = False,
) -> None:
    """Filter a raw crawl (WARC, JSONL, Parquet, text) into clean documents: Trafilatura, URL blocklist, language
    ID, Gopher/C4/FineWeb rules, PII redaction."""
    run(inputs, output, config, force=force)
