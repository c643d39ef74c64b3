"""Our datatrove blocks on their own (PII in test_pii.py): offline language ID (py3langid and a user's fastText model),
per-language quality rules, the bundled URL blocklist, n-gram decontamination."""

import numpy as np
import pytest
from datatrove.data import Document
from helpers import write_fasttext_model
from warc_factory import prose

from llmforge.data import blocks


def doc(text: str, **metadata) -> Document:
    return Document(text=text, id="x", metadata=metadata)


def test_py3langid_labels_and_filters_languages():
    texts = {language: " ".join(prose(3, language)) for language in ("en", "de", "fr", "es")}
    language_id = blocks.Py3LangIdFilter(["en", "de"], min_confidence=0.65)
    documents = {language: doc(text) for language, text in texts.items()}
    results = {language: language_id.filter(d) for language, d in documents.items()}
    assert results == {"en": True, "de": True, "fr": (False, "language_fr"), "es": (False, "language_es")}
    assert {lang: d.metadata["language"] for lang, d in documents.items()} == {l: l for l in texts}  # noqa: E741
    assert all(d.metadata["language_score"] > 0.9 for d in documents.values())
    # a few words of three languages: no language is likely enough
    mixed = doc("Hello world. Hallo Welt. Bonjour le monde.")
    assert language_id.filter(mixed) == (False, "low_confidence") and mixed.metadata["language_score"] < 0.65
    # no languages given: every language is kept, and labelled
    assert blocks.Py3LangIdFilter([], 0.65).filter(doc(texts["fr"])) is True


def test_user_supplied_fasttext_model_through_datatrove(tmp_path):
    model = tmp_path / "lid.bin"
    write_fasttext_model(
        model, {"en": ["the", "and", "river"], "de": ["der", "und", "fluss"], "fr": ["le", "et"]}
    )
    language_filter = blocks.fasttext_language_filter(str(model), ["en", "de"], 0.65)
    assert type(language_filter).__name__ == "LanguageFilter"  # datatrove's own block
    english, german, french = doc("the river and the river"), doc("der fluss und der fluss"), doc("le et le")
    assert language_filter.filter(english) and language_filter.filter(german)
    assert not language_filter.filter(french)
    assert (english.metadata["language"], german.metadata["language"], french.metadata["language"]) == (
        "en",
        "de",
        "fr",
    )
    assert english.metadata["language_score"] > 0.99


def test_quality_rules_judge_each_language_with_its_own_words():
    from functools import partial

    from llmforge.stages.crawl_filter import GopherQualitySettings, _gopher_quality

    settings = GopherQualitySettings().model_dump(exclude={"enabled"})
    german = doc("\n\n".join(prose(1, "de", paragraphs=3)), language="de")
    english_rules = _gopher_quality(settings, "en")
    assert english_rules.filter(german) == (
        False,
        "gopher_enough_stop_words",
    )  # no "the", "and", ... in German
    per_language = blocks.PerLanguage("gopher_quality", partial(_gopher_quality, settings))
    assert per_language.filter(german) is True
    assert per_language.filter(doc("\n\n".join(prose(1, paragraphs=3)), language="en")) is True
    assert set(per_language.filters) == {"de", "en"}
    assert blocks.stop_words("en") is None and "und" in blocks.stop_words("de")


@pytest.mark.slow
def test_bundled_url_blocklist_works_offline():
    url_filter = blocks.OfflineURLFilter()  # datatrove's bundled lists, tldextract's bundled suffix list
    assert url_filter.filter(doc("x", url="https://www.pornhub.com/view")) == (False, "domain")
    assert url_filter.filter(doc("x", url="https://www.wikipedia.org/wiki/River")) is True
    assert url_filter.filter(doc("no url at all")) is True


def test_decontamination_hits_normalised_ngrams(tmp_path):
    question = "Which river flows through the old town before it reaches the harbour near the northern bridge"
    hashes = np.unique(blocks.ngram_hashes(question, 13))
    np.savez(tmp_path / "index.npz", hashes=np.sort(hashes), items=np.zeros(len(hashes), dtype=np.int64))
    decontaminate = blocks.Decontaminate(str(tmp_path / "index.npz"), 13)
    # case, punctuation and spacing do not hide an overlap
    hit = doc(
        "Quiz time!  WHICH river flows through the old town, before it reaches the harbour... near the bridge?"
    )
    assert decontaminate.filter(hit) == (False, "contaminated") and hit.metadata["contaminated_items"] == [0]
    assert (
        decontaminate.filter(doc("Which river flows through the old town before it reaches the sea")) is True
    )


def test_every_filter_can_be_switched_and_tuned(tmp_path):
    from llmforge.stages.crawl_filter import Config, build_pipeline

    groups = [("jsonl", [str(tmp_path / "a.jsonl")])]
    _, names = build_pipeline(groups, Config(), tmp_path)
    assert names == ["read_jsonl", "url_filter", "language", "gopher_repetition", "gopher_quality", "c4_quality",
                     "fineweb_quality", "pii", "write"]  # fmt: skip
    off = {"enabled": False}
    config = Config.model_validate({"url_filter": off, "gopher_repetition": off, "gopher_quality": off, "c4": off,
                                    "fineweb": off, "pii": {"mode": "off"}})  # fmt: skip
    assert build_pipeline(groups, config, tmp_path)[1] == ["read_jsonl", "language", "write"]

    # mC4's paragraph rule, off by default, with its thresholds from the config
    config = Config.model_validate(
        {"c4": {"paragraphs": True, "min_paragraphs": 2, "min_paragraph_length": 40}}
    )
    pipeline, names = build_pipeline(groups, config, tmp_path)
    paragraphs = pipeline[names.index("c4_paragraphs")]
    assert names.index("c4_paragraphs") == names.index("c4_quality") + 1
    assert (
        paragraphs.filter(
            doc("A line that is long enough to count here.\nAnd so is this line here, long enough to count.")
        )
        is True
    )
    assert paragraphs.filter(doc("A line that is long enough to count here.\nshort")) == (
        False,
        "< 2 paragraphs",
    )


def test_seed_thresholds_are_the_defaults_and_reach_datatrove(tmp_path):
    """The seed's 100-word minimum and 20% duplicated lines are stricter than datatrove's 50 words and 30%: a page
    between the two is dropped by default and kept once the threshold is set back to datatrove's."""
    from llmforge.stages.crawl_filter import Config, build_pipeline

    def rule(name: str, **settings):
        config = Config.model_validate({name: settings})
        pipeline, names = build_pipeline([("jsonl", [str(tmp_path / "a.jsonl")])], config, tmp_path)
        return pipeline[names.index(name)]

    words = " ".join(prose(4, paragraphs=1, sentences_per_paragraph=6)).split()
    seventy = " ".join(words[:70]) + "."
    assert rule("gopher_quality").filter(doc(seventy, language="en")) == (False, "gopher_short_doc")
    assert rule("gopher_quality", min_doc_words=50).filter(doc(seventy, language="en")) is True

    lines = (
        prose(5, paragraphs=12, sentences_per_paragraph=1) + ["Read on below."] * 5
    )  # 4 of 17 lines repeat
    quarter = "\n".join(lines)
    assert rule("gopher_repetition").filter(doc(quarter, language="en")) == (False, "dup_line_frac")
    assert rule("gopher_repetition", dup_line_frac=0.3).filter(doc(quarter, language="en")) is True


def test_trafilatura_is_imported_before_the_extraction_sandbox_forks():
    """datatrove's sandbox gets the per-page timeout for its start: importing trafilatura there (0.3-1 s) dropped
    the first page of every task on a busy machine. A fresh process shows where the import happens."""
    import subprocess
    import sys

    script = """
import sys
from datatrove.data import Document
from llmforge.data.blocks import Trafilatura
html = "<html><body><article><p>" + "The river runs past the old mill and the bridge. " * 20 + "</p></article></body></html>"
assert "trafilatura" not in sys.modules
(page,) = Trafilatura(timeout=30).run([Document(text=html, id="p")])
print("trafilatura" in sys.modules, page.text.count("old mill"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "20"], result.stderr[-2000:]
