"""Our datatrove pipeline blocks: small additions where datatrove has no block, or one that needs the network.

Imported only inside stage bodies and datatrove workers (it imports datatrove). Every block is a plain datatrove
PipelineStep, so the pipelines that use them run on any datatrove executor (local, Slurm, Ray).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import os
from collections.abc import Callable
from pathlib import Path

import fsspec.compression
import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline import extractors as datatrove_extractors
from datatrove.pipeline.filters import FastTextClassifierFilter, LanguageFilter, URLFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.lid import FT176LID
from datatrove.utils.text import TextNormConfig, ngrams, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer

from llmforge.data.compression import decompressing

# ---------------------------------------------------------------------------------------------------------------
# Reading and writing


class TextFileReader(BaseDiskReader):
    """One document per plain-text file (datatrove reads JSONL, Parquet and WARC, not folders of .txt files)."""

    name = "📄 Text files"

    def read_file(self, filepath: str) -> DocumentsPipeline:
        with (
            self.data_folder.open(filepath, "rb", compression=None) as raw,
            decompressing(raw, filepath) as handle,
        ):
            with self.track_time():
                text = handle.read().decode("utf-8")
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
    """datatrove's JSONL writer, gzip files per task (`${rank}.jsonl.gz`), whose bytes depend only on the documents
    written (no time in the gzip header). With `shard_mb`, a task starts a new file once its current one holds that
    many MB of JSON (uncompressed): `00000.jsonl.gz`, `00000_001.jsonl.gz`, ... (datatrove would put the counter
    first, `001_00000.jsonl.gz`, and sorted names would no longer follow the tasks' order)."""

    def __init__(self, output_folder: str, shard_mb: float = 0):
        super().__init__(output_folder, output_filename="${rank}.jsonl.gz", compression=REPRODUCIBLE_GZIP,
                         max_file_size=int(shard_mb * 2**20) if shard_mb > 0 else -1)  # fmt: skip

    def _get_filename_with_file_id(self, filename: str) -> str:
        number = self.file_id_counter[filename]
        if not number:
            return filename
        folder, name = os.path.split(filename)
        stem, dot, suffix = name.partition(".")
        return os.path.join(folder, f"{stem}_{number:03d}{dot}{suffix}")


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
# Model-based quality (llmforge.data.quality trains the classifier and runs the passes)


def _judge(block: BaseFilter, doc: Document, score: float) -> bool | tuple[bool, str]:
    """What every quality block does with a document's score: metadata["quality_score"], a histogram (stats
    `score_bin_<n>`, see quality.score_bin), and the rule: at least `threshold`, or in bin `min_bin` and above (the
    second pass of a top-share filter, which must decide exactly as the first pass counted), or keep all."""
    from llmforge.data.quality import SCORE_KEY, score_bin

    doc.metadata[SCORE_KEY] = round(float(score), 6)
    number = score_bin(score)
    block.stat_update(f"score_bin_{number}")
    if block.threshold is not None and score < block.threshold:
        return False, "below_threshold"
    if block.min_bin is not None and number < block.min_bin:
        return False, "below_threshold"
    return True


class QualityFilter(BaseFilter):
    """Scores documents with a classifier llmforge.data.quality trained, in batches (scikit-learn's hashing has a
    per-call cost: a document at a time is 10x slower)."""

    name = "⭐ Quality classifier"

    def __init__(self, classifier: str, threshold: float | None = None, min_bin: int | None = None,
                 exclusion_writer: JsonlWriter | None = None, batch_size: int = 256):  # fmt: skip
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.classifier, self.threshold, self.min_bin = classifier, threshold, min_bin
        self._score = None

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        if self._score is None:
            from llmforge.data.quality import LinearClassifier

            self._score = LinearClassifier.load(self.classifier).score
        scores = self._score([doc.text for doc in batch])
        return [_judge(self, doc, score) for doc, score in zip(batch, scores, strict=True)]

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]


class FastTextQualityFilter(FastTextClassifierFilter):
    """A published fastText classifier (DCLM's, for one) through datatrove's FastTextClassifierFilter, scoring
    whole documents by the probability of `label`."""

    name = "⭐ Quality classifier (fastText)"

    def __init__(self, model_path: str, label: str = "hq", threshold: float | None = None,
                 min_bin: int | None = None, exclusion_writer: JsonlWriter | None = None):  # fmt: skip
        super().__init__(model_path, save_labels_in_metadata=True, newline_replacement=" ",
                         exclusion_writer=exclusion_writer)  # fmt: skip
        self.label, self.threshold, self.min_bin = label, threshold, min_bin

    @property
    def model(self):
        # datatrove copies a model into its download cache under the file's name, where a classifier replaced at
        # the same path would be shadowed by the old copy: load the file itself
        if self._model is None:
            from llmforge.data.quality import load_fasttext

            self._model = load_fasttext(self.model_url, self.label)
        return self._model

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        super().filter(
            doc
        )  # no keep/remove labels: scores the document, stores every label's score, keeps it
        doc.text = text
        scores = {key: doc.metadata.pop(key) for key in list(doc.metadata) if key.startswith("__label__")}
        return _judge(self, doc, scores.get(f"__label__{self.label}", 0.0))


def quality_filter(classifier: str, label: str = "hq", threshold: float | None = None, min_bin: int | None = None,
                   exclusion_writer: JsonlWriter | None = None) -> BaseFilter:  # fmt: skip
    """The quality block for a classifier: one llmforge trained (a folder with classifier.json), or a fastText
    model file scored by `label`."""
    from llmforge.data.quality import INFO_FILE

    if (Path(classifier) / INFO_FILE).is_file():
        return QualityFilter(classifier, threshold, min_bin, exclusion_writer)
    return FastTextQualityFilter(classifier, label, threshold, min_bin, exclusion_writer)


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
