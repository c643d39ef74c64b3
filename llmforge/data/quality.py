"""Model-based quality filtering, as DCLM and FineWeb-Edu do it: a classifier trained on documents worth training on
(positives) against ordinary ones (negatives) scores every document, and the best are kept.

Train (`train_classifier`): both sides are read like any data stage's input (documents artifacts, JSONL, Parquet,
text); a share of each is held out; a logistic regression learns from hashed word unigrams and bigrams weighted by
tf-idf (scikit-learn: the features of DCLM's fastText classifier, trained deterministically); the held-out documents
give precision, recall, ROC AUC and the score distribution. The output directory holds `model.npz` (the idf and
weight vectors) and `classifier.json` (the feature settings, labels, held-out figures): no pickle, so a classifier
loads the same way under any scikit-learn version and cannot run code.

Why not fastText, which DCLM used: the fastText build datatrove installs (fasttext-numpy2-wheel) stops with
"Encountered NaN" in about half of its training runs here, bigram models included, and the build that trains
reliably (fasttext-community) is refused by datatrove's fastText blocks, which check for the other distribution by
name. On the same held-out documents this learner was as accurate (bench/RESULTS.md, quality classifier).
Published fastText classifiers (DCLM's `hq` model) still score through datatrove's FastTextClassifierFilter:
prediction works with the installed build.

Filter (`llmforge.data.blocks.quality_filter`, `filter_documents`): each document's score (the positive label's
probability) goes into `metadata["quality_score"]` and into a histogram kept in datatrove's stats. `threshold`
keeps documents scoring at least that; `keep` keeps a top share (0.1: DCLM's top 10%). A share of a corpus is a
property of that corpus, not of the training data, so `keep` runs two passes: the first only scores and counts, the
histogram gives the score where the top share starts, and the second scores again and keeps what reaches it.
Scoring twice costs less than writing the corpus an extra time, and it runs on any datatrove executor.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from llmforge.config import StageConfig
from llmforge.data.sources import ReadSettings
from llmforge.errors import InputError

MODEL_FILE = "model.npz"
INFO_FILE = "classifier.json"
POSITIVE, NEGATIVE = "hq", "lq"  # DCLM's fastText classifier calls its positive label `hq` too
SCORE_KEY = "quality_score"
ARTIFACT_KIND = "quality-classifier"  # what a stage running train_classifier writes
FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")  # the first four bytes of every fastText .bin / .ftz model

# Scores are counted in bins 0.01 wide in log-odds (probability p falls in bin floor(100 * ln(p / (1 - p)))),
# clipped at +-12: fine where probabilities crowd near 0 and 1, and few enough (2,401 at most) to add up in
# datatrove's stats across tasks and executors.
BINS_PER_UNIT = 100
MAX_LOGIT = 12


class TrainSettings(StageConfig):
    input: ReadSettings = Field(default_factory=ReadSettings, description="How raw files are read")
    holdout: float = Field(
        0.1, gt=0, lt=0.5, description="Share of each side held out to measure the classifier"
    )
    max_documents: int | None = Field(
        None, ge=10, description="Documents per side, a seeded random sample of each; none: all of them"
    )
    seed: int = Field(0, description="Seed of the sample, the hold-out split and the learner")
    ngrams: int = Field(2, ge=1, le=3, description="Word n-grams up to this length are features (DCLM: 2)")
    features_log2: int = Field(
        20, ge=10, le=24, description="2^this hashed features (the model holds two float32 vectors that long)"
    )
    alpha: float = Field(1e-5, gt=0, description="L2 regularisation of the logistic regression")


class FilterSettings(StageConfig):
    keep: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Keep this top share of the documents by score (0.1: DCLM's top 10%); two passes",
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="Keep documents whose score is at least this; one pass"
    )
    label: str = Field(
        POSITIVE,
        description="For a fastText model file (a published classifier): the label whose probability is the "
        "score (DCLM's: hq)",
    )

    @model_validator(mode="after")
    def _one_rule(self):
        if (self.keep is None) == (self.threshold is None):
            raise ValueError("give exactly one of keep (a top share) and threshold (a minimum score)")
        return self


# ---------------------------------------------------------------------------------------------------------------
# The classifier


class LinearClassifier:
    """Logistic regression on hashed word n-grams weighted by sublinear tf-idf and normalised to unit length:
    score = sigmoid(weights . features + intercept). scikit-learn's HashingVectorizer makes the features (its
    hashing is stable across versions); the rest is numpy."""

    def __init__(
        self, ngrams: int, features_log2: int, idf: np.ndarray, weights: np.ndarray, intercept: float
    ):
        self.ngrams, self.features_log2 = ngrams, features_log2
        self.idf, self.weights, self.intercept = idf, weights, intercept
        self._vectorizer = None

    @property
    def vectorizer(self):
        if self._vectorizer is None:
            self._vectorizer = hashing_vectorizer(self.ngrams, self.features_log2)
        return self._vectorizer

    def score(self, texts: list[str]) -> np.ndarray:
        """The probability that each text is a positive."""
        from sklearn.preprocessing import normalize

        counts = self.vectorizer.transform(texts).astype(np.float32)
        counts.data = 1 + np.log(counts.data)
        features = normalize(counts.multiply(self.idf).tocsr())
        logits = features @ self.weights + self.intercept
        return 1 / (1 + np.exp(-np.clip(logits, -50, 50)))

    def save(self, folder: Path, **info) -> None:
        np.savez_compressed(folder / MODEL_FILE, idf=self.idf, weights=self.weights,
                            intercept=np.float32(self.intercept))  # fmt: skip
        info = {"format": "llmforge-linear", "model": MODEL_FILE, "label": POSITIVE, "negative_label": NEGATIVE,
                "ngrams": self.ngrams, "features_log2": self.features_log2, **info}  # fmt: skip
        (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> LinearClassifier:
        folder = Path(folder)
        try:
            info = json.loads((folder / INFO_FILE).read_text())
            with np.load(folder / info["model"]) as arrays:
                return cls(info["ngrams"], info["features_log2"], arrays["idf"], arrays["weights"],
                           float(arrays["intercept"]))  # fmt: skip
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{folder}: not a readable quality classifier ({exc})") from None


def hashing_vectorizer(ngrams: int, features_log2: int):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(ngram_range=(1, ngrams), n_features=2**features_log2, alternate_sign=False,
                             norm=None, dtype=np.float32)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Training


def sample_texts(documents, limit: int | None, rng: random.Random) -> list[str]:
    """The texts of the documents, or a uniform random sample of `limit` of them (reservoir sampling: one pass)."""
    texts: list[str] = []
    for seen, document in enumerate(documents):
        if limit is None or len(texts) < limit:
            texts.append(document.text)
        else:
            slot = rng.randint(0, seen)
            if slot < limit:
                texts[slot] = document.text
    return texts


def split(texts: list[str], holdout: float, rng: random.Random) -> tuple[list[str], list[str]]:
    """(train, held out), shuffled; at least one document on each side."""
    texts = list(texts)
    rng.shuffle(texts)
    held = min(len(texts) - 1, max(1, round(len(texts) * holdout)))
    return texts[held:], texts[:held]


def fit(positives: list[str], negatives: list[str], settings: TrainSettings) -> LinearClassifier:
    """Fit the classifier (deterministic for a seed)."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import SGDClassifier

    vectorizer = hashing_vectorizer(settings.ngrams, settings.features_log2)
    counts = vectorizer.transform(positives + negatives)
    tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    learner = SGDClassifier(loss="log_loss", alpha=settings.alpha, random_state=settings.seed)
    learner.fit(tfidf.transform(counts), labels)
    return LinearClassifier(settings.ngrams, settings.features_log2, tfidf.idf_.astype(np.float32),
                            learner.coef_[0].astype(np.float32), float(learner.intercept_[0]))  # fmt: skip


def train_classifier(positives, negatives, out: Path, settings: TrainSettings) -> dict:
    """Train on two Corpus objects (llmforge.data.corpus), write model.npz and classifier.json into `out`, and
    return the figures for the manifest's stats."""
    from llmforge.console import log

    rng = random.Random(settings.seed)
    sides = {}
    for label, corpus in ((POSITIVE, positives), (NEGATIVE, negatives)):
        texts = [t for t in sample_texts(corpus.documents(), settings.max_documents, rng) if t.strip()]
        if len(texts) < 2:
            raise InputError(f"the {'positive' if label == POSITIVE else 'negative'} documents hold "
                             f"{len(texts)} non-empty document(s); a classifier needs at least 2 on each side")  # fmt: skip
        sides[label] = split(texts, settings.holdout, rng)
    (train_positive, held_positive), (train_negative, held_negative) = sides[POSITIVE], sides[NEGATIVE]
    log(f"quality: training on {len(train_positive):,} positive and {len(train_negative):,} negative documents, "
        f"{len(held_positive) + len(held_negative):,} held out")  # fmt: skip
    stats = {
        "documents": {"positive": len(train_positive) + len(held_positive),
                      "negative": len(train_negative) + len(held_negative)},
        "train": {"positive": len(train_positive), "negative": len(train_negative)},
    }  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fit(train_positive, train_negative, settings).save(out, settings=settings.model_dump(mode="json"))
    classifier = LinearClassifier.load(out)  # measured as saved (float32), as the filter will score
    stats["heldout"] = heldout_report(classifier.score(held_positive), classifier.score(held_negative))
    info = json.loads((out / INFO_FILE).read_text())
    (out / INFO_FILE).write_text(json.dumps({**info, **stats}, indent=2) + "\n")
    return stats


def heldout_report(positive: np.ndarray, negative: np.ndarray) -> dict:
    """Precision, recall and accuracy at a 0.5 score, ROC AUC, and the score distribution of each side."""
    true_positive, false_positive = int((positive >= 0.5).sum()), int((negative >= 0.5).sum())
    scores = np.concatenate([positive, negative])
    ranks = scores.argsort(kind="stable").argsort() + 1.0  # ROC AUC as the Mann-Whitney statistic
    auc = (ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2) / (
        len(positive) * len(negative)
    )
    quantiles = (0.1, 0.25, 0.5, 0.75, 0.9)
    return {
        "positive": len(positive),
        "negative": len(negative),
        "precision": round(true_positive / max(1, true_positive + false_positive), 4),
        "recall": round(true_positive / len(positive), 4),
        "accuracy": round((true_positive + len(negative) - false_positive) / len(scores), 4),
        "roc_auc": round(float(auc), 4),
        "score_quantiles": {
            side: {f"p{round(q * 100)}": round(float(np.quantile(values, q)), 4) for q in quantiles}
            for side, values in (("positive", positive), ("negative", negative))
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Scoring and filtering


def score_bin(score: float) -> int:
    """The histogram bin of a score (see BINS_PER_UNIT)."""
    p = min(max(score, 1e-9), 1 - 1e-9)  # fastText's probabilities can be 0, or exceed 1 by 1e-5
    logit = min(max(math.log(p / (1 - p)), -MAX_LOGIT), MAX_LOGIT)
    return math.floor(logit * BINS_PER_UNIT)


def bin_floor(number: int) -> float:
    """The lowest score in a bin."""
    return 1 / (1 + math.exp(-number / BINS_PER_UNIT))


def top_share_bin(histogram: dict[int, int], keep: float) -> int:
    """The lowest bin such that documents in it and above make at least `keep` of the total: every document above
    the cut is kept, so the share kept overshoots `keep` by at most the documents of one bin."""
    total = sum(histogram.values())
    if not total:
        return 0
    counted = 0
    for number in sorted(histogram, reverse=True):
        counted += histogram[number]
        if counted >= keep * total - 1e-9:
            return number
    return min(histogram)


def histogram_of(counters: dict[str, float]) -> dict[int, int]:
    """The score histogram out of a QualityFilter's datatrove counters (as llmforge.data.executors.step_stats
    gives them)."""
    return {
        int(k.removeprefix("score_bin_")): int(v) for k, v in counters.items() if k.startswith("score_bin_")
    }


def load_fasttext(path: str | Path, label: str):
    """A fastText model file, checked: its header, and that it has the label whose probability is the score."""
    from fasttext.FastText import _FastText

    path = Path(path)
    with open(path, "rb") as handle:
        if handle.read(4) != FASTTEXT_MAGIC:
            raise InputError(f"{path}: not a fastText model file (no fastText header)")
    model = _FastText(str(path))
    if f"__label__{label}" not in model.labels:
        labels = ", ".join(sorted(name.removeprefix("__label__") for name in model.labels))
        raise InputError(f"{path}: the classifier has no label '{label}' (labels: {labels}); set the label")
    return model


def fasttext_line(text: str) -> str:
    """A document as a fastText model reads it (one line), as datatrove's FastTextClassifierFilter passes it with
    newline_replacement=" "."""
    return text.strip().replace("\n", " ")


def load_scorer(path: str | Path, label: str = POSITIVE):
    """What scores texts for a classifier: a folder train_classifier wrote (or its artifact), or a fastText
    model file scored by the probability of `label`. Returns a function from texts to scores; fails with an
    InputError naming the file before any work."""
    path = Path(path)
    if (path / INFO_FILE).is_file():
        return LinearClassifier.load(path).score
    if path.is_dir():
        raise InputError(f"{path}: not a quality classifier (no {INFO_FILE}) nor a fastText model file")
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder (a quality classifier, or a fastText model file)")
    model, key = load_fasttext(path, label), f"__label__{label}"

    def score(texts: list[str]) -> np.ndarray:
        labels, probabilities = model.predict([fasttext_line(t) for t in texts], k=-1)
        return np.array([dict(zip(ls, ps, strict=True)).get(key, 0.0)
                         for ls, ps in zip(labels, probabilities, strict=True)])  # fmt: skip

    return score


def classifier_input(path: str | Path, label: str = POSITIVE, stage: str = "quality-filter"):
    """The classifier as an input of a filtering stage, checked before any work: an artifact of
    `train_classifier` (its fingerprint), or a fastText model file or a classifier folder outside llmforge
    (fingerprinted by content). It decides which documents survive, so it belongs in the output's lineage."""
    from llmforge.artifacts import MANIFEST, open_artifact, raw_input

    if (Path(path) / MANIFEST).is_file():
        artifact = open_artifact(path, stage, [ARTIFACT_KIND])  # the wrong kind of artifact is named as such
        load_scorer(path, label)
        return artifact.ref()
    load_scorer(path, label)
    ref = raw_input(str(path))
    ref.detail["role"] = "quality classifier"
    return ref


def filter_documents(corpus, classifier: str | Path, settings: FilterSettings, work: Path, executor, fingerprint: str,
                     removed_sample: int = 100, stage: str = "quality-filter", shard_mb: float = 0) -> dict:  # fmt: skip
    """Score every document of a Corpus (llmforge.data.corpus) and write those kept to `work`/data (datatrove's
    JSONL, like every documents artifact), samples of the removed ones to `work`/removed/quality; returns the
    figures for the manifest's stats. Resumes like every data stage: finished datatrove tasks of the run with this
    `fingerprint` (the calling stage's) are skipped, and the first pass's histogram is read back from its stats."""
    import shutil

    from llmforge.console import log
    from llmforge.data import blocks
    from llmforge.data.executors import Step, filter_counts, run_steps, step_stats
    from llmforge.data.parts import plan_tasks, split_note

    load_scorer(classifier, settings.label)  # a wrong file or label fails here, not in every worker
    classifier = str(Path(classifier).resolve())
    groups = corpus.groups()
    plan = plan_tasks(groups, corpus.settings.task_mb)
    tasks, logs = plan.tasks, work / "logs"
    log(f"{stage}: {tasks} tasks{split_note(plan)}")

    def readers() -> list:
        return plan.readers()

    cut: dict = {"threshold": settings.threshold}
    if settings.keep is not None:
        score = Step("score", lambda: [*readers(), blocks.quality_filter(classifier, settings.label)], tasks)
        run_steps([score], executor, logs, stage, fingerprint)
        histogram = histogram_of(step_stats(logs / "score")[len(groups)])
        cut = {"min_bin": top_share_bin(histogram, settings.keep)}
        log(f"{stage}: the top {settings.keep:.1%} of {sum(histogram.values()):,} documents score at least "
            f"{bin_floor(cut['min_bin']):.4f}")  # fmt: skip

    def keep() -> list:
        removed = (
            blocks.SampleWriter(str(work / "removed" / "quality"), removed_sample) if removed_sample else None
        )
        return [*readers(), blocks.quality_filter(classifier, settings.label, exclusion_writer=removed, **cut),
                blocks.DocumentWriter(str(work / "data"), shard_mb)]  # fmt: skip

    run_steps([Step("filter", keep, tasks)], executor, logs, stage, fingerprint)
    counters = step_stats(logs / "filter")
    read = sum(int(c.get("documents", 0)) for c in counters[: len(groups)])
    scored = counters[len(groups)]
    kept = int(counters[-1].get("total", 0))
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    threshold = settings.threshold if settings.threshold is not None else bin_floor(cut["min_bin"])
    return {
        "input": {"documents": read},
        "rule": {"keep": settings.keep} if settings.keep is not None else {"threshold": settings.threshold},
        "threshold": round(threshold, 6),
        "documents": kept,
        "removed": read - kept,
        "kept_share": round(kept / max(1, read), 4),
        "filters": {"quality": filter_counts(scored)},
        "score_quantiles": histogram_quantiles(histogram_of(scored)),
    }


def histogram_quantiles(histogram: dict[int, int], quantiles=(0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
    """Score quantiles of the corpus from its histogram (each the lowest score of its bin)."""
    total, result = sum(histogram.values()), {}
    for q in quantiles:
        counted = 0
        for number in sorted(histogram):
            counted += histogram[number]
            if counted >= q * total:
                result[f"p{round(q * 100)}"] = round(bin_floor(number), 4)
                break
    return result
