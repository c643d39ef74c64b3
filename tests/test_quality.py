"""The model-based quality filter: a classifier trained on synthetic prose (positives) against spammy boilerplate
(negatives), measured on held-out documents, then scoring documents through datatrove and keeping them by threshold
or by top share; a published fastText classifier through datatrove's FastTextClassifierFilter."""

import json
import random

import pytest
from helpers import documents_artifact, write_fasttext_model, write_jsonl
from warc_factory import prose

from llmforge.data import blocks, quality
from llmforge.data.corpus import Corpus
from llmforge.data.executors import ExecutorSettings
from llmforge.data.sources import InputSettings
from llmforge.errors import InputError

SPAM = ("buy now", "best price", "free shipping", "click here", "limited offer", "order today", "casino bonus",
        "win big", "subscribe", "sign up", "accept all cookies", "share on facebook", "read more", "hot deals",
        "all rights reserved", "top 10", "you won't believe", "cheap watches", "login", "register")  # fmt: skip


def explanatory(seed: int) -> str:
    return "\n\n".join(prose(seed, paragraphs=2, sentences_per_paragraph=4))


def spam(seed: int) -> str:
    """Keyword stuffing with a few real words in it, a phrase per line, as spam pages are."""
    rng = random.Random(seed)
    words = " ".join(prose(seed + 10_000, paragraphs=1, sentences_per_paragraph=1)).split()
    lines = [" ".join(rng.choice(SPAM) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(6, 12))]
    return "\n".join(f"{line} {rng.choice(words)}" for line in lines)


def graded(seed: int, share: float) -> str:
    """A page that is `share` prose sentences and the rest spam lines: the scores spread from 0 to 1."""
    rng = random.Random(seed)
    sentences = " ".join(prose(seed + 20_000, paragraphs=1, sentences_per_paragraph=10)).split(". ")
    junk = spam(seed + 30_000).splitlines()
    parts = [sentences[i] if rng.random() < share else junk[i % len(junk)] for i in range(10)]
    return "\n".join(parts)


SETTINGS = quality.TrainSettings(holdout=0.2, features_log2=16, seed=0)


def corpus(argument, stage="quality-train") -> Corpus:
    return Corpus([str(argument)], InputSettings(), stage)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """300 positives as JSONL, 300 negatives as a folder of text files (two of the formats the stages read)."""
    root = tmp_path_factory.mktemp("quality-inputs")
    write_jsonl(root / "positives.jsonl", [{"text": explanatory(seed)} for seed in range(300)])
    (root / "negatives").mkdir()
    for seed in range(300):
        (root / "negatives" / f"{seed:03d}.txt").write_text(spam(seed))
    return root


@pytest.fixture(scope="module")
def classifier(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier")
    stats = quality.train_classifier(
        corpus(inputs / "positives.jsonl"), corpus(inputs / "negatives"), out, SETTINGS
    )
    return out, stats


def test_classifier_separates_held_out_documents(classifier):
    out, stats = classifier
    assert stats["documents"] == {"positive": 300, "negative": 300}
    assert stats["train"] == {"positive": 240, "negative": 240}  # 20% of each side held out
    heldout = stats["heldout"]
    assert (heldout["positive"], heldout["negative"]) == (60, 60)
    assert heldout["precision"] >= 0.95 and heldout["recall"] >= 0.95 and heldout["roc_auc"] >= 0.99, heldout
    quantiles = heldout["score_quantiles"]
    assert quantiles["positive"]["p10"] > 0.5 > quantiles["negative"]["p90"]
    info = json.loads((out / quality.INFO_FILE).read_text())
    assert (
        info["label"] == "hq"
        and info["heldout"] == heldout
        and (info["ngrams"], info["features_log2"]) == (2, 16)
    )


def test_scores_match_scikit_learn(classifier, inputs):
    """The saved vectors score as scikit-learn's own pipeline does (tf-idf, unit length, logistic regression)."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline

    texts = [explanatory(seed) for seed in range(40)] + [spam(seed) for seed in range(40)]
    labels = [1] * 40 + [0] * 40
    pipeline = make_pipeline(quality.hashing_vectorizer(2, 16), TfidfTransformer(sublinear_tf=True),
                             SGDClassifier(loss="log_loss", alpha=1e-5, random_state=0)).fit(texts, labels)  # fmt: skip
    ours = quality.fit(texts[:40], texts[40:], quality.TrainSettings(features_log2=16))
    probe = [explanatory(500), spam(500), graded(500, 0.5)]
    assert ours.score(probe) == pytest.approx(pipeline.predict_proba(probe)[:, 1], abs=1e-4)


def test_same_seed_same_model(classifier, inputs, tmp_path):
    """A seed fixes the sample, the split and the learner: the same documents give the same model."""
    out, stats = classifier
    again = quality.train_classifier(corpus(inputs / "positives.jsonl"), corpus(inputs / "negatives"), tmp_path,
                                     SETTINGS)  # fmt: skip
    first, second = quality.LinearClassifier.load(out), quality.LinearClassifier.load(tmp_path)
    assert (first.weights == second.weights).all() and (first.idf == second.idf).all()
    assert again == stats


def test_filter_block_scores_as_training_measured(classifier):
    """The score in the metadata is the one training measured; documents are scored in batches."""
    from datatrove.data import Document

    out, _ = classifier
    texts = [explanatory(1000), spam(1000), graded(1000, 0.5)]
    expected = quality.load_scorer(out)(texts)
    block = blocks.quality_filter(str(out), threshold=0.5)
    assert isinstance(block, blocks.QualityFilter) and block.batch_size > 1
    documents = [Document(text=text, id=str(n), metadata={"url": "u"}) for n, text in enumerate(texts)]
    results = block.filter_batch(documents)
    assert [d.metadata["quality_score"] for d in documents] == pytest.approx(expected, abs=1e-6)
    assert results[0] is True and results[1] == (False, "below_threshold")
    assert [d.text for d in documents] == texts  # scoring leaves the text alone
    assert all(set(d.metadata) == {"url", "quality_score"} for d in documents)
    single = Document(text=texts[0], id="s")
    assert (
        block.filter(single) is True
        and single.metadata["quality_score"] == documents[0].metadata["quality_score"]
    )


def test_keep_a_top_share_in_two_passes(classifier, tmp_path):
    out, _ = classifier
    texts = [graded(seed, share=seed / 199) for seed in range(200)]
    random.Random(0).shuffle(texts)
    documents = documents_artifact(tmp_path / "docs", texts)
    work = tmp_path / "work"
    stats = quality.filter_documents(corpus(documents, "quality-filter"), out, quality.FilterSettings(keep=0.25),
                                     work, ExecutorSettings(workers=1), "run-a", removed_sample=5)  # fmt: skip
    scores = quality.load_scorer(out)(texts)
    # the 50 best documents, give or take a few tied within one histogram bin (0.01 in log-odds)
    assert 50 <= stats["documents"] <= 53 and stats["removed"] == 200 - stats["documents"], stats
    assert stats["input"] == {"documents": 200} and stats["rule"] == {"keep": 0.25}
    kept = [json.loads(line) for line in _lines(work / "data")]
    assert len(kept) == stats["documents"]
    kept_scores = sorted((d["metadata"]["quality_score"] for d in kept), reverse=True)
    assert kept_scores == pytest.approx(sorted(scores, reverse=True)[: len(kept)], abs=1e-6)
    assert min(kept_scores) >= stats["threshold"] > sorted(scores, reverse=True)[len(kept)]
    assert stats["filters"]["quality"]["reasons"] == {"below_threshold": stats["removed"]}
    assert len(list(_lines(work / "removed" / "quality"))) == 5  # the sample of removed documents
    # an interrupted or repeated run reads the first pass back and decides the same
    assert quality.filter_documents(corpus(documents, "quality-filter"), out, quality.FilterSettings(keep=0.25),
                                    work, ExecutorSettings(workers=1), "run-a", removed_sample=5) == stats  # fmt: skip


def test_keep_by_threshold(classifier, tmp_path):
    """One pass over raw JSONL."""
    out, _ = classifier
    texts = [graded(seed, share=seed / 99) for seed in range(100)]
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in texts])
    stats = quality.filter_documents(corpus(raw, "quality-filter"), out, quality.FilterSettings(threshold=0.5),
                                     tmp_path / "work", ExecutorSettings(workers=1), "run-a")  # fmt: skip
    scores = quality.load_scorer(out)(texts)
    assert stats["documents"] == int((scores >= 0.5).sum()) and 10 < stats["documents"] < 90
    assert stats["threshold"] == 0.5 and stats["rule"] == {"threshold": 0.5}
    assert not (tmp_path / "work" / "logs" / "score").exists()  # no first pass


def test_a_published_fasttext_classifier(tmp_path):
    """A fastText model file (DCLM's, say) scores through datatrove's FastTextClassifierFilter by its label."""
    from datatrove.data import Document

    model = write_fasttext_model(tmp_path / "dclm.bin", {"hq": ["river", "museum", "explained"],
                                                         "cc": ["buy", "cheap", "casino"]})  # fmt: skip
    block = blocks.quality_filter(str(model), label="hq", threshold=0.5)
    assert isinstance(block, blocks.FastTextQualityFilter) and isinstance(
        block, blocks.FastTextClassifierFilter
    )
    good, bad = (
        Document(text="the river\nmuseum explained", id="a"),
        Document(text="buy cheap casino", id="b"),
    )
    assert block.filter(good) is True and block.filter(bad) == (False, "below_threshold")
    assert good.metadata == {"quality_score": pytest.approx(quality.load_scorer(model, "hq")([good.text])[0])}
    assert good.metadata["quality_score"] > 0.99 > 0.01 > bad.metadata["quality_score"]
    texts = [f"river museum {'cheap ' * n}" for n in range(40)]
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in texts])
    stats = quality.filter_documents(corpus(raw, "quality-filter"), model, quality.FilterSettings(keep=0.25),
                                     tmp_path / "work", ExecutorSettings(workers=1), "run-a")  # fmt: skip
    assert 10 <= stats["documents"] <= 12, stats
    with pytest.raises(InputError, match="no label 'good'.*labels: cc, hq"):
        quality.load_scorer(model, "good")


def test_the_classifier_is_an_input_with_lineage(classifier, tmp_path):
    from llmforge.artifacts import InputRef, run_stage
    from llmforge.config import StageConfig

    out, _ = classifier
    loose = quality.classifier_input(out)  # a classifier folder outside llmforge: fingerprinted by content
    assert loose.kind == "raw" and loose.detail["role"] == "quality classifier"
    model = write_fasttext_model(tmp_path / "m.bin", {"hq": ["a"], "lq": ["b"]})
    assert quality.classifier_input(model).detail["role"] == "quality classifier"

    class Copied(StageConfig):
        seed: int = 0

    def copy(ctx):
        for name in (quality.MODEL_FILE, quality.INFO_FILE):
            (ctx.work / name).write_bytes((out / name).read_bytes())

    ref = InputRef(path="(test)", kind="raw", fingerprint="0")
    artifact = run_stage("quality-train", quality.ARTIFACT_KIND, Copied(), [ref], tmp_path / "cls", copy)
    made = quality.classifier_input(artifact)
    assert (made.kind, made.stage) == (quality.ARTIFACT_KIND, "quality-train")
    wrong = run_stage("crawl-filter", "documents", Copied(), [ref], tmp_path / "docs", copy)
    with pytest.raises(InputError, match="needs a quality-classifier artifact"):
        quality.classifier_input(wrong)


def test_top_share_bin():
    histogram = {-300: 50, 0: 30, 200: 15, 500: 5}
    assert quality.top_share_bin(histogram, 0.05) == 500
    assert quality.top_share_bin(histogram, 0.1) == 200  # 5 + 15 = 20 documents: at least the share asked
    assert quality.top_share_bin(histogram, 1.0) == -300
    assert quality.bin_floor(0) == 0.5 and quality.score_bin(0.5) == 0
    assert quality.score_bin(1.00001) == quality.score_bin(0.999999999) == 1200  # fastText's 1 + 1e-5
    assert quality.score_bin(0.0) == -1200
    for score in (0.01, 0.3, 0.73, 0.999):
        assert (
            quality.bin_floor(quality.score_bin(score))
            <= score
            < quality.bin_floor(quality.score_bin(score) + 1)
        )


def test_bad_classifiers_and_settings(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a fastText model file"):
        quality.load_scorer(tmp_path / "model.bin")
    with pytest.raises(InputError, match="no such file"):
        quality.load_scorer(tmp_path / "missing")
    with pytest.raises(InputError, match="not a quality classifier"):
        quality.load_scorer(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / quality.INFO_FILE).write_text("{}")
    with pytest.raises(InputError, match="not a readable quality classifier"):
        quality.load_scorer(tmp_path / "broken")
    with pytest.raises(ValueError, match="exactly one of keep"):
        quality.FilterSettings()
    with pytest.raises(ValueError, match="exactly one of keep"):
        quality.FilterSettings(keep=0.1, threshold=0.5)


def test_too_few_documents_on_a_side(inputs, tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": explanatory(0)}])
    with pytest.raises(InputError, match="positive documents hold 1 non-empty document"):
        quality.train_classifier(corpus(one), corpus(inputs / "negatives"), tmp_path / "out", SETTINGS)


def _lines(folder):
    import gzip

    for file in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(file, "rt") as handle:
            yield from handle
