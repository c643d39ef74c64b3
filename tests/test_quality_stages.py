"""The quality commands: `quality train` -> `quality filter` through the CLI on made-up documents, `quality
annotate` with a tiny random model and with SmolLM2-135M-Instruct, and a classifier trained on annotations."""

import gzip
import json

import pytest
from helpers import documents_artifact, llmforge, stats_mismatches, tiny_model_artifact, write_jsonl
from test_quality import explanatory, graded, spam
from typer.testing import CliRunner

from llmforge.artifacts import Artifact, InputRef, run_stage
from llmforge.cli import app
from llmforge.config import StageConfig
from llmforge.data import annotate as annotation
from llmforge.data.documents import iter_documents
from llmforge.errors import InputError
from llmforge.stages import quality


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    root = tmp_path_factory.mktemp("sides")
    positives = write_jsonl(root / "positives.jsonl", [{"text": explanatory(seed)} for seed in range(80)])
    (root / "negatives").mkdir()
    for seed in range(80):
        (root / "negatives" / f"{seed:03d}.txt").write_text(spam(seed))
    return positives, root / "negatives"


def read_records(artifact) -> list[dict]:
    return list(iter_documents(Artifact.open(artifact)))


def test_train_then_filter_through_the_cli(sides, tmp_path):
    positives, negatives = sides
    classifier = tmp_path / "classifier"
    made = llmforge("quality", "train", positives, "--negative", negatives, "-o", classifier, "--holdout", "0.2",
                    "--set", "features_log2=16")  # fmt: skip
    assert made.stdout.strip() == str(classifier)
    trained = Artifact.open(classifier)
    assert (trained.kind, trained.stage) == ("quality-classifier", "quality train")
    assert trained.config["roles"] == ["positive", "negative"]
    heldout = trained.stats["heldout"]
    assert (heldout["positive"], heldout["negative"]) == (16, 16)
    assert heldout["precision"] >= 0.9 and heldout["recall"] >= 0.9, heldout
    assert stats_mismatches(classifier) == []

    texts = [graded(seed, share=seed / 59) for seed in range(60)]
    documents = documents_artifact(tmp_path / "docs", texts)
    kept = tmp_path / "kept"
    llmforge("quality", "filter", documents, "--classifier", classifier, "-o", kept, "--keep", "0.25",
             "--workers", "1")  # fmt: skip
    artifact = Artifact.open(kept)
    assert (artifact.kind, artifact.stage) == ("documents", "quality filter")
    # the classifier is an input: its fingerprint is in the lineage (and in the output's fingerprint)
    assert {(e["kind"], e["fingerprint"]) for e, _ in artifact.parents()} >= {
        ("quality-classifier", trained.fingerprint)
    }
    stats = artifact.stats
    assert 15 <= stats["documents"] <= 18 and stats["input"] == {"documents": 60}, stats
    records = read_records(kept)
    assert len(records) == stats["documents"]
    assert all(r["metadata"]["quality_score"] >= stats["threshold"] for r in records)
    assert stats_mismatches(kept) == []
    again = llmforge("quality", "filter", documents, "--classifier", classifier, "-o", kept, "--keep", "0.25")
    assert "up to date" in again.stderr and again.stdout.strip() == str(kept)

    from llmforge.card import make_card

    card = make_card(kept)
    assert "2. quality filter" in card and "kept the top 25% by score" in card
    assert "classifier: `classifier`" in card and "held out: precision" in card


def test_the_roles_of_the_inputs_are_in_the_fingerprint(sides, tmp_path):
    """`A B --negative C` and `A --negative B C` read the same files in the same order: not the same classifier."""
    positives, negatives = sides
    more = write_jsonl(tmp_path / "more.jsonl", [{"text": spam(seed)} for seed in range(100, 110)])
    config = quality.TrainConfig(features_log2=12)
    one = quality.train([str(positives), str(more)], tmp_path / "a", [str(negatives)], config)
    two = quality.train([str(positives)], tmp_path / "b", [str(more), str(negatives)], config)
    assert Artifact.open(one).fingerprint != Artifact.open(two).fingerprint
    assert Artifact.open(two).config["roles"] == ["positive", "negative", "negative"]


def test_bad_usage_is_one_line_and_exit_2(sides, tmp_path):
    positives, negatives = sides
    documents = documents_artifact(tmp_path / "docs", ["a document"])
    runner = CliRunner()
    for argv, message in (
        (["quality", "filter", str(documents), "-o", str(tmp_path / "o1")], "needs --classifier"),
        (["quality", "train", str(positives), "-o", str(tmp_path / "o2")], "needs negatives"),
        (["quality", "filter", str(documents), "--classifier", str(documents), "-o", str(tmp_path / "o3")],
         "needs a quality-classifier artifact"),
        (["quality", "filter", str(documents), "--classifier", str(tmp_path / "nope"), "-o", str(tmp_path / "o4")],
         "no such file or folder"),
        (["quality", "filter", str(documents), "--classifier", "c", "--keep", "0.1", "--threshold", "0.5", "-o",
          str(tmp_path / "o5")], "exactly one of keep"),
        (["quality", "annotate", str(documents), "-o", str(tmp_path / "o6")], "needs --model"),
        (["quality", "annotate", str(documents), "--model", str(documents), "-o", str(tmp_path / "o7")],
         "needs a model, adapter or quantized-model artifact"),
    ):  # fmt: skip
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and message in result.stderr, (argv, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_parse_score():
    assert annotation.parse_score("Clear prose.\nEducational score:  3") == 3
    assert annotation.parse_score("**Educational score:** 4/5") == 4
    assert (
        annotation.parse_score("educational score: 1 ... Educational score: 2") == 2
    )  # the conclusion counts
    for reply in (
        "Educational score: 100",
        "Educational score: 3.5",
        "a score of 3",
        "Educational score: six",
    ):
        assert annotation.parse_score(reply) is None, reply


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory, tiny_tokenizer_dir):
    """The tiny random Llama with room for the rubric in its context (the tiny tokenizer spends many tokens on it)."""
    return tiny_model_artifact(tmp_path_factory.mktemp("model") / "tiny", tiny_tokenizer_dir,
                               max_position_embeddings=2048)  # fmt: skip


def test_annotate_with_a_tiny_model(long_context_model, tmp_path):
    texts = [explanatory(seed) for seed in range(4)] + [spam(seed) for seed in range(4)] + ["  "]
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"text": t, "id": f"d{n}"} for n, t in enumerate(texts)])
    config = quality.AnnotateConfig(sample=5, max_tokens=6, batch_size=4)
    out = quality.annotate([str(raw)], tmp_path / "ann", str(long_context_model), config)
    artifact = Artifact.open(out)
    assert artifact.kind == "annotations" and stats_mismatches(out) == []
    records = read_records(out)
    assert len(records) == 5 and {r["text"] for r in records} <= set(texts[:8])  # never the blank one
    for record in records:
        meta = record["metadata"]
        assert meta[annotation.SCORE_KEY] in range(6)
        # a random model's reply never parses; its score is the forced answer
        assert meta[annotation.FROM_KEY] == ("reply" if annotation.parse_score(meta["edu_reply"]) is not None
                                             else "forced")  # fmt: skip
    stats = artifact.stats
    assert stats["input"] == {"documents": 9} and stats["parsed"] + stats["forced"] == 5
    assert sum(stats["score_counts"].values()) == 5 and stats["completion_tokens"] <= 5 * 6
    roles = {e.get("role") for e, _ in artifact.parents()}
    assert "annotator" in roles  # the model is an input of the annotations


def test_annotated_chunks_are_reused(long_context_model, tmp_path):
    """Each finished chunk is on disk: an interrupted run generates only the rest. A batch of two chunks' worth
    generates them together and writes each whole: the records are those of one chunk at a time."""
    from llmforge.data.corpus import Corpus
    from llmforge.data.sources import InputSettings
    from llmforge.model.loading import resolve_model

    size = 2 * annotation.CHUNK + 6
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"text": explanatory(seed)} for seed in range(size)])
    documents, _ = annotation.sample_documents(Corpus([str(raw)], InputSettings(), "t").documents(), size, 0)
    source = resolve_model(long_context_model, "t")
    with annotation.open_annotator(source, "embedded", 0, 256, 2 * annotation.CHUNK, "t") as annotator:
        first, reused = annotation.annotate_documents(documents, annotator, tmp_path / "parts")
        assert reused == 0 and len(first) == size and len(list((tmp_path / "parts").glob("*.jsonl"))) == 3
        (tmp_path / "parts" / "00001.jsonl").unlink()  # an interrupted run's missing chunk
        again, reused = annotation.annotate_documents(documents, annotator, tmp_path / "parts")
        assert reused == 2 and again == first
    with annotation.open_annotator(source, "embedded", 0, 256, 4, "t") as annotator:
        one_by_one, reused = annotation.annotate_documents(documents, annotator, tmp_path / "parts-4")
    assert reused == 0 and one_by_one == first


class Made(StageConfig):
    seed: int = 0


def annotations_artifact(out, scored: list[tuple[str, int | None]]):
    def body(ctx):
        (ctx.work / "data").mkdir()
        with gzip.open(ctx.work / "data" / "00000.jsonl.gz", "wt") as handle:
            for number, (text, score) in enumerate(scored):
                meta = {annotation.SCORE_KEY: score, annotation.FROM_KEY: "reply", annotation.REPLY_KEY: ""}
                handle.write(json.dumps({"text": text, "id": str(number), "metadata": meta}) + "\n")

    ref = InputRef(path="(test)", kind="raw", fingerprint=str(len(scored)))
    return run_stage("quality annotate", "annotations", Made(), [ref], out, body)


def test_train_on_annotations(tmp_path):
    """Scores at or above positive_min are the positives, below it the negatives; unscored ones are left out."""
    scored = [(explanatory(s), 3 + s % 3) for s in range(40)] + [(spam(s), s % 3) for s in range(40)]
    annotations = annotations_artifact(tmp_path / "ann", [*scored, ("no score", None)])
    config = quality.TrainConfig(features_log2=14, holdout=0.2)
    out = quality.train([str(annotations)], tmp_path / "cls", None, config)
    artifact = Artifact.open(out)
    assert artifact.stats["annotations"] == {"positive": 40, "negative": 40, "unparsed": 1}
    assert artifact.stats["documents"] == {"positive": 40, "negative": 40}
    assert artifact.stats["heldout"]["roc_auc"] >= 0.95 and artifact.config["roles"] == ["annotations"]
    assert stats_mismatches(out) == []
    stricter = quality.train([str(annotations)], tmp_path / "cls5", None,
                             quality.TrainConfig(features_log2=14, positive_min=5))  # fmt: skip
    assert Artifact.open(stricter).stats["annotations"]["positive"] == sum(score == 5 for _, score in scored)
    bad = annotations_artifact(tmp_path / "bad", [("x", 7), ("y", 1)])
    with pytest.raises(InputError, match="edu_score must be 0-5 or null, not 7"):
        quality.train([str(bad)], tmp_path / "cls-bad", None, config)


@pytest.mark.xdist_group("smollm2")
def test_annotate_with_smollm2(smollm2, tmp_path):
    """A real instruct model scores three short documents with the rubric, through the CLI (a process of its own:
    the engine's thread and this process's OpenMP workers would compete): every score an integer 0-5."""
    texts = [
        "Photosynthesis is how green plants make food. Using sunlight, they turn water and carbon dioxide into "
        "glucose and oxygen inside their chloroplasts. Try it: put a pond weed under a lamp and count the bubbles.",
        "BUY CHEAP WATCHES NOW!!! best price free shipping click here casino bonus win big",
        "The water cycle: water evaporates from the sea, condenses into clouds and falls as rain.",
    ]
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "ann"
    llmforge("quality", "annotate", raw, "--model", smollm2, "-o", out, "--max-tokens", 8, "--batch-size", 3)
    records = read_records(out)
    assert [r["text"] for r in records] == texts
    assert all(r["metadata"][annotation.SCORE_KEY] in range(6) for r in records)
    assert all(r["metadata"][annotation.REPLY_KEY].strip() for r in records)  # the model did answer
    stats = Artifact.open(out).stats
    assert stats["parsed"] + stats["forced"] == 3 and 0 < stats["completion_tokens"] <= 3 * 8


def test_a_classifiers_documents_are_not_training_data(tmp_path):
    """Eval's contamination check reads the documents a later stage trained on: a quality classifier's positives
    and negatives, or an annotated sample, are not what the model saw."""
    from llmforge.evaluation.contamination import training_documents

    web = documents_artifact(tmp_path / "web", ["web page"])
    wiki = documents_artifact(tmp_path / "wiki", ["good page"])

    def made(name, kind, inputs):
        def body(ctx):
            (ctx.work / "payload").write_text(name)

        return Artifact.open(
            run_stage("quality train", kind, Made(), [i.ref() for i in inputs], tmp_path / name, body)
        )

    classifier = made("cls", "quality-classifier", [Artifact.open(wiki), Artifact.open(web)])
    labels = made("ann", "annotations", [Artifact.open(web)])
    kept = made("kept", "documents", [Artifact.open(web), classifier])
    tokens = made("tokens", "tokens", [kept])
    chosen = training_documents([tokens, kept, classifier, labels, Artifact.open(web), Artifact.open(wiki)])
    assert [a.path for a in chosen] == [kept.path]


def test_annotate_on_vllm_where_there_is_none_is_refused_before_anything_is_written(
    long_context_model, tmp_path
):
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"text": explanatory(0)}])
    result = llmforge("quality", "annotate", raw, "--model", long_context_model, "-o", tmp_path / "ann",
                      "--backend", "vllm", env={"LLMFORGE_VLLM_PYTHON": str(tmp_path / "no-python")}, check=False)  # fmt: skip
    assert result.returncode == 2 and "the vllm backend needs vLLM" in result.stderr
    assert not list(tmp_path.glob("ann*"))


def test_vllm_gets_the_context_annotation_needs_and_the_gpus_asked_for(long_context_model, tmp_path):
    """vLLM's context is the rubric, the longest document, the reply and the forced answer, not the model's (vLLM
    sizes its KV cache for a whole one); --tensor-parallel-size reaches vLLM, and is refused without it."""
    from llmforge.model.loading import load_tokenizer, resolve_model
    from llmforge.serving import vllm_backend

    source = resolve_model(long_context_model, "t")
    tokenizer = load_tokenizer(source)
    serving, config = annotation.vllm_serving(source, tokenizer, 64, 256, 8, 2)
    rubric = len(annotation.rubric_ids(tokenizer, ""))
    assert config.max_model_len == rubric + 256 + 64 + 32 < 2048 and config.max_batch_size == 8
    argv = vllm_backend.command(serving, config, 8000, vllm_backend.Runtime("python", "0", cpu=False))
    assert argv[argv.index("--max-model-len") + 1] == str(config.max_model_len)
    assert (
        argv[argv.index("--tensor-parallel-size") + 1] == "2"
        and argv[argv.index("--max-num-seqs") + 1] == "8"
    )
    _, whole = annotation.vllm_serving(source, tokenizer, 256, 2048, 8, 1)
    assert whole.max_model_len == 2048  # the model's own context caps it
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"text": explanatory(0)}])
    result = llmforge("quality", "annotate", raw, "--model", long_context_model, "-o", tmp_path / "ann",
                      "--backend", "embedded", "--tensor-parallel-size", 2, check=False)  # fmt: skip
    assert (
        result.returncode == 2 and "needs --backend vllm" in result.stderr and not (tmp_path / "ann").exists()
    )
