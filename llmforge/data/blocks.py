"""Our datatrove pipeline blocks: small additions where datatrove has no block, or one that needs the network.

Imported only inside stage bodies and datatrove workers (it imports datatrove). Every block is a plain datatrove
PipelineStep, so the pipelines that use them run on any datatrove executor (local, Slurm, Ray).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import ipaddress
import re
from collections.abc import Callable

import fsspec.compression
import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline import extractors as datatrove_extractors
from datatrove.pipeline.filters import LanguageFilter, URLFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.formatters.pii import PIIFormatter, public_ip_validator
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.lid import FT176LID
from datatrove.utils.text import TextNormConfig, ngrams, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer

# ---------------------------------------------------------------------------------------------------------------
# Reading and writing


class TextFileReader(BaseDiskReader):
    """One document per plain-text file (datatrove reads JSONL, Parquet and WARC, not folders of .txt files)."""

    name = "📄 Text files"

    def read_file(self, filepath: str) -> DocumentsPipeline:
        with self.data_folder.open(filepath, "rt", encoding="utf-8", compression="infer") as handle:
            with self.track_time():
                text = handle.read()
                document = self.get_document_from_dict(
                    {"text": text, "id": self.data_folder.resolve_paths(filepath)}, filepath, 0
                )
        if document:
            yield document


class Trafilatura(datatrove_extractors.Trafilatura):
    """datatrove's Trafilatura extractor, with trafilatura imported in the task's process first.

    datatrove extracts in a forked sandbox process and gives that process's start the per-page timeout (1 s), but
    the task's process never imports trafilatura itself, so each sandbox imported it anew (0.3-1 s on 2 busy
    cores): on a loaded machine the first page of a task, and the page after every timeout, were dropped as
    timeouts. Imported here, the fork inherits it and the timeout measures extraction only.
    """

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import trafilatura  # noqa: F401

        yield from super().run(data, rank, world_size)


class StrictJsonlReader(JsonlReader):
    """datatrove's JsonlReader, except that damage stops the task with an error naming the file and line:
    datatrove skips a line that is not JSON, and stops reading a file at a decoding error, with only a warning,
    so a corrupt shard would silently lose documents."""

    def read_file(self, filepath: str) -> DocumentsPipeline:
        import gzip
        import zlib

        import orjson

        from llmforge.errors import InputError, where

        path = self.data_folder.resolve_paths(filepath)
        number = 0
        try:
            with self.data_folder.open(filepath, "r", compression=self.compression) as handle:
                for number, line in enumerate(handle, 1):  # noqa: B007 (read in the except below)
                    if not line.strip():
                        continue
                    with self.track_time():
                        try:
                            data = orjson.loads(line)
                        except orjson.JSONDecodeError as exc:
                            raise InputError(f"{where(path, number)}: not valid JSON ({exc})") from None
                        document = self.get_document_from_dict(data, filepath, number - 1)
                    if document:
                        yield document
        except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as exc:
            after = f" after line {number}" if number else ""
            raise InputError(f"{path}: corrupt or truncated{after} ({exc})") from None


# gzip stamps the time of writing into every file's header, so two runs of the same fingerprint wrote different
# bytes. Files of this compression carry mtime 0 (registered at import, so in every worker that unpickles a
# DocumentWriter): the same documents make the same bytes.
REPRODUCIBLE_GZIP = "gzip-mtime0"
if REPRODUCIBLE_GZIP not in fsspec.compression.compr:
    fsspec.compression.register_compression(
        REPRODUCIBLE_GZIP, lambda file, mode="rb", **kwargs: gzip.GzipFile(fileobj=file, mode=mode, mtime=0, **kwargs),
        extensions=[],
    )  # fmt: skip


class DocumentWriter(JsonlWriter):
    """datatrove's JSONL writer, one gzip file per task (`${rank}.jsonl.gz`), whose bytes depend only on the
    documents written (no time in the gzip header)."""

    def __init__(self, output_folder: str):
        super().__init__(output_folder, output_filename="${rank}.jsonl.gz", compression=REPRODUCIBLE_GZIP)


class SampleWriter(DocumentWriter):
    """An exclusion writer that keeps the first `limit` removed documents of each task (-1 keeps all).

    Crawls lose most of their documents to filters; a sample per filter shows why without doubling the data.
    """

    def __init__(self, output_folder: str, limit: int):
        super().__init__(output_folder)
        self.limit = limit
        self.kept = 0

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        if self.limit < 0 or self.kept < self.limit:
            self.kept += 1
            super().write(document, rank, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Language identification, offline


class Py3LangIdFilter(BaseFilter):
    """Language ID with py3langid, whose model ships inside the wheel (datatrove's LanguageFilter downloads one).

    Writes `language` and `language_score` (a probability) into the metadata; keeps a document when its language is
    wanted (any, if `languages` is empty) and the probability reaches `min_confidence`.
    """

    name = "🌍 Language ID (py3langid)"

    def __init__(
        self, languages: list[str], min_confidence: float, exclusion_writer: JsonlWriter | None = None
    ):
        super().__init__(exclusion_writer)
        self.languages = set(languages)
        self.min_confidence = min_confidence
        self._identifier = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        language, score = self._identifier.classify(doc.text)
        doc.metadata["language"] = language
        doc.metadata["language_score"] = round(float(score), 4)
        self.stat_update(f"language_{language}")
        if score < self.min_confidence:
            return False, "low_confidence"
        if self.languages and language not in self.languages:
            return False, f"language_{language}"
        return True


class LocalFastTextLID(FT176LID):
    """datatrove's fastText language ID, loading a model file the user supplies instead of downloading lid.176."""

    def __init__(self, model_path: str, languages: list[str] | None):
        super().__init__(languages)
        self.model_path = model_path

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(self.model_path)
        return self._model


def fasttext_language_filter(model_path: str, languages: list[str], min_confidence: float,
                             exclusion_writer: JsonlWriter | None = None) -> LanguageFilter:  # fmt: skip
    """datatrove's LanguageFilter on a local fastText model (labels `__label__en`, ...)."""
    block = LanguageFilter(languages=languages or None, language_threshold=min_confidence,
                           exclusion_writer=exclusion_writer)  # fmt: skip
    block.model = LocalFastTextLID(model_path, languages or None)
    return block


class PerLanguage(BaseFilter):
    """Runs a datatrove quality filter with the word splitting of each document's language.

    datatrove's filters split words for one language given at construction; a German page judged with English
    rules fails Gopher's stop-word check. `make(language)` builds the filter for a language, once per worker;
    languages without a datatrove word tokenizer are judged as English.
    """

    def __init__(
        self, name: str, make: Callable[[str], BaseFilter], exclusion_writer: JsonlWriter | None = None
    ):
        self.name = name  # before datatrove names the block's stats after it
        super().__init__(exclusion_writer)
        self.make = make
        self.filters: dict[str, BaseFilter] = {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        language = doc.metadata.get("language") or "en"
        block = self.filters.get(language)
        if block is None:
            block = self.filters[language] = self.make(language if has_word_tokenizer(language) else "en")
        return block.filter(doc)


def has_word_tokenizer(language: str) -> bool:
    try:
        load_word_tokenizer(language)
    except ValueError:
        return False
    return True


def stop_words(language: str) -> list[str] | None:
    """Gopher's stop words for English (datatrove's default, None); spaCy's list for other languages; [] if none."""
    if language in ("en", "eng", "eng_Latn"):
        return None
    try:
        return sorted(importlib.import_module(f"spacy.lang.{language}.stop_words").STOP_WORDS)
    except ImportError:
        return []


class OfflineURLFilter(URLFilter):
    """datatrove's URL blocklist on its bundled lists, never reaching the network; documents without a URL pass.

    tldextract would fetch the public suffix list; the snapshot inside its wheel is used instead.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=())

    def filter(self, document: Document) -> bool | tuple[bool, str]:
        if not document.metadata.get("url"):
            return True
        return super().filter(document)


# ---------------------------------------------------------------------------------------------------------------
# PII

# datatrove's own email and IPv4 patterns (its PIIFormatter); phone, credit-card and IPv6 patterns are ours.
_DATATROVE_PII = PIIFormatter()
EMAIL = _DATATROVE_PII.emails_replacer.regex
IPV4 = _DATATROVE_PII.ip_replacer.regex
IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:)[0-9A-Fa-f:][0-9A-Fa-f:.]{1,43}[0-9A-Fa-f](?![\w:])"
)
CREDIT_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,8}(?:[ .-]\d{1,8}){1,5}(?!\w|[.-]\d)"
)

PII_KINDS = ("email", "credit_card", "ip", "phone")
PLACEHOLDERS = {
    "email": "<EMAIL>",
    "credit_card": "<CREDIT_CARD>",
    "ip": "<IP_ADDRESS>",
    "phone": "<PHONE_NUMBER>",
}


def luhn_valid(digits: str) -> bool:
    """The checksum every payment card number carries: double every second digit from the right."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    separators = set(re.findall(r"[ -]", match))
    return 13 <= len(digits) <= 19 and len(separators) <= 1 and luhn_valid(digits)


def _ip(match: str, public_only: bool) -> bool:
    return public_ip_validator(match, public_only)


def _ipv6(match: str, public_only: bool) -> bool:
    try:
        address = ipaddress.ip_address(match)
    except ValueError:
        return False
    return address.version == 6 and (address.is_global or not public_only)


def _phone(match: str) -> bool:
    """Shaped like a phone number: 9-15 digits and a `+`/`(` prefix, or 2-5 digits first and 4+ last
    ("555 123 4567", "030 1234 5678"); not a dotted address, not a list of years."""
    groups = re.findall(r"\d+", match)
    if not 9 <= sum(map(len, groups)) <= 15:
        return False
    try:  # dotted quads are addresses (private ones are left alone on purpose), not phone numbers
        ipaddress.ip_address(match)
        return False
    except ValueError:
        pass
    if match.startswith(("+", "(")):
        return True
    if all(re.fullmatch(r"(19|20)\d\d", group) for group in groups):
        return False
    return 2 <= len(groups[0]) <= 5 and len(groups[-1]) >= 4


class PIIScanner:
    """Finds emails, IP addresses (v4 and v6), phone numbers and Luhn-valid card numbers, and redacts them.

    Kinds run in a fixed order (emails first, phones last) so that a redacted card number is not then read as a
    phone number. Only public IP addresses count by default: private ones identify no one.
    """

    def __init__(self, kinds: list[str], public_ips_only: bool = True):
        unknown = set(kinds) - set(PII_KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {', '.join(PII_KINDS)}")
        self.kinds = [kind for kind in PII_KINDS if kind in kinds]
        self.public_ips_only = public_ips_only

    def _passes(self, kind: str) -> list[tuple[re.Pattern, Callable[[str], bool] | None]]:
        if kind == "email":
            return [(EMAIL, None)]
        if kind == "credit_card":
            return [(CREDIT_CARD, _card)]
        if kind == "ip":
            return [
                (IPV4, lambda m: _ip(m, self.public_ips_only)),
                (IPV6, lambda m: _ipv6(m, self.public_ips_only)),
            ]
        return [(PHONE, _phone)]

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with each PII match replaced by its placeholder, and the number of matches per kind."""
        counts: dict[str, int] = {}
        for kind in self.kinds:
            for pattern, valid in self._passes(kind):

                def replace(match: re.Match, kind=kind, valid=valid) -> str:
                    if valid is not None and not valid(match.group(0)):
                        return match.group(0)
                    counts[kind] = counts.get(kind, 0) + 1
                    return PLACEHOLDERS[kind]

                text = pattern.sub(replace, text)
        return text, counts


class PIIRedactor(BaseFormatter):
    """Replaces PII by placeholders (`<EMAIL>`, `<IP_ADDRESS>`, `<PHONE_NUMBER>`, `<CREDIT_CARD>`)."""

    name = "📞 PII redaction"

    def __init__(self, kinds: list[str], public_ips_only: bool = True):
        super().__init__()
        self.scanner = PIIScanner(kinds, public_ips_only)

    def format(self, text: str) -> str:
        text, counts = self.scanner.redact(text)
        for kind, count in counts.items():
            self.stat_update(f"redacted_{kind}", value=count)
        if counts:
            self.stat_update("documents_redacted")
        return text


class PIIFilter(BaseFilter):
    """Drops every document that contains PII (the `--pii drop` policy)."""

    name = "📞 PII filter"

    def __init__(
        self, kinds: list[str], public_ips_only: bool = True, exclusion_writer: JsonlWriter | None = None
    ):
        super().__init__(exclusion_writer)
        self.scanner = PIIScanner(kinds, public_ips_only)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        _, counts = self.scanner.redact(doc.text)
        if counts:
            return False, "contains_" + "_and_".join(sorted(counts))
        return True


# ---------------------------------------------------------------------------------------------------------------
# Deduplication and benchmark decontamination


def document_text(doc: Document) -> str:
    """What exact dedup hashes: the text, byte for byte (datatrove's ExactDedup needs a named getter)."""
    return doc.text


# datatrove's decontamination normalisation and hashing (lowercase, no punctuation, numbers as 0, xxhash64).
DECONT_NORM = TextNormConfig()
DECONT_HASH = HashConfig()


def ngram_hashes(text: str, n: int, language: str = "en", keep_numbers: bool = False) -> np.ndarray:
    """Hashes of the word n-grams of `text`, normalised the way datatrove's n-gram decontamination does it (with
    `keep_numbers`, numbers stay as written instead of all becoming 0)."""
    norm = dataclasses.replace(DECONT_NORM, norm_numbers=False) if keep_numbers else DECONT_NORM
    words = load_word_tokenizer(language).word_tokenize(simplify_text(text, norm))
    hash_func = create_hash_func(DECONT_HASH)
    return np.fromiter((hash_func(" ".join(gram)) for gram in ngrams(words, n)), dtype=np.uint64)


class Decontaminate(BaseFilter):
    """Drops documents sharing any n-gram with a benchmark item; records which items each document hit.

    The index (built by the dedup stage) is an .npz of sorted n-gram hashes and, aligned with them, the number of
    the benchmark item each comes from. Hits are counted in the stats as `item_<number>` so they add up across
    tasks (and across an interrupted run's finished tasks).
    """

    name = "🦠 Decontamination"

    def __init__(self, index_path: str, n: int, exclusion_writer: JsonlWriter | None = None,
                 keep_numbers: bool = False):  # fmt: skip
        super().__init__(exclusion_writer)
        self.index_path = index_path
        self.n, self.keep_numbers = n, keep_numbers
        self._hashes = self._items = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._hashes is None:
            with np.load(self.index_path) as index:
                self._hashes, self._items = index["hashes"], index["items"]
        hashes = np.unique(ngram_hashes(doc.text, self.n, keep_numbers=self.keep_numbers))
        left = np.searchsorted(self._hashes, hashes, side="left")
        right = np.searchsorted(self._hashes, hashes, side="right")
        hit = right > left
        if not hit.any():
            return True
        items = sorted({int(i) for a, b in zip(left[hit], right[hit], strict=True) for i in self._items[a:b]})
        for item in items:
            self.stat_update(f"item_{item}")
        doc.metadata["contaminated_items"] = items
        return False, "contaminated"
