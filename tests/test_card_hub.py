"""Cards the Hugging Face Hub accepts: the front matter of model cards along import -> LoRA SFT -> quantize -> eval,
read back with huggingface_hub's own card classes (offline), with the Hub id the import recorded as base_model and
the eval report's scores in model-index."""

import shutil

import pytest
from helpers import chat_records, documents_artifact, sentences, write_jsonl

from llmforge.artifacts import Artifact
from llmforge.card import make_card

HUB_ID = "llmforge-tests/tiny-llama"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lineage(tiny_model, tmp_path_factory, one_thread):
    from llmforge.stages import eval as eval_stage
    from llmforge.stages import import_model, quantize, sft

    root = tmp_path_factory.mktemp("hubcard")
    plain = root / "download"  # a Hugging Face directory as a user has it: the files, no llmforge manifest
    shutil.copytree(tiny_model, plain, ignore=shutil.ignore_patterns("artifact.json"))
    imported = import_model.run(plain, root / "imported", import_model.Config(hub_id=HUB_ID))
    chats = write_jsonl(root / "chat.jsonl", chat_records(8))
    adapter = sft.run(imported, chats, root / "sft", sft.Config.model_validate({
        "max_steps": 2, "batch_size": 4, "max_length": 64, "learning_rate": 1e-3,
        "lora": {"enabled": True, "rank": 4, "alpha": 8}}))  # fmt: skip
    docs = documents_artifact(root / "docs", sentences(200, seed=9))
    quantized = quantize.run(adapter, docs, root / "w8", quantize.Config(method="w8a16", algorithm="rtn",
                                                                         seq_len=64, eval_tokens=256))  # fmt: skip
    report = eval_stage.run([str(adapter), str(quantized)], root / "report",
                            eval_stage.Config(tasks=["llmforge_arith_mc"], limit=4))  # fmt: skip
    return {name: Artifact.open(path) for name, path in (("import", imported), ("sft", adapter),
                                                           ("quantize", quantized), ("report", report))}  # fmt: skip


def load(card: str, tmp_path, name: str):
    """The card as the Hub reads it: written as README.md and loaded by huggingface_hub (which parses model-index
    into EvalResults and raises on malformed metadata)."""
    from huggingface_hub import ModelCard

    path = tmp_path / name / "README.md"
    path.parent.mkdir()
    path.write_text(card)
    return ModelCard.load(path)


def scores_of(report: Artifact, model: Artifact) -> dict:
    label = next(e["label"] for e in report.manifest["inputs"] if e.get("fingerprint") == model.fingerprint)
    return report.stats["models"][label]["scores"]


def test_base_model_is_the_imported_hub_id_through_sft_and_quantize(lineage, tmp_path):
    imported = load(make_card(lineage["import"].path, license="apache-2.0"), tmp_path, "import").data
    assert imported.base_model == HUB_ID and "base_model_relation" not in imported.to_dict()  # the Hub's copy
    assert imported.license == "apache-2.0" and imported.library_name == "transformers"
    assert lineage["import"].extra["source"]["hub_id"] == HUB_ID

    adapter = load(make_card(lineage["sft"].path), tmp_path, "sft").data
    assert adapter.base_model == HUB_ID and adapter.base_model_relation == "adapter"
    assert adapter.library_name == "peft" and {"import", "sft", "lora"} <= set(adapter.tags)
    assert adapter.datasets == ["chat.jsonl"]  # the SFT file; the imported model is not a dataset

    card = make_card(lineage["quantize"].path)
    quantized = load(card, tmp_path, "quantize").data
    # trained here, then quantized: a finetune of the Hub model, whose weights are also quantized (tags)
    assert quantized.base_model == HUB_ID and quantized.base_model_relation == "finetune"
    assert {"quantize", "w8a16", "compressed-tensors"} <= set(quantized.tags)
    assert quantized.datasets == ["chat.jsonl"]
    assert "| group size | 128 input columns |" in card  # what quantize chose, from its manifest
    assert lineage["quantize"].stats["group_size"] == 128


def test_model_index_holds_the_reports_scores_for_this_model_only(lineage, tmp_path):
    report = lineage["report"]
    for name in ("sft", "quantize"):
        model = lineage[name]
        data = load(make_card(model.path), tmp_path, name).data
        expected = scores_of(report, model)["llmforge_arith_mc"]
        assert data.model_name == model.path.name
        results = {(r.dataset_name, r.metric_name): r for r in data.eval_results}
        assert set(results) == {("llmforge_arith_mc", key.split(",")[0]) for key in expected}
        for key, value in expected.items():
            result = results[("llmforge_arith_mc", key.split(",")[0])]
            assert result.task_type == "text-generation" and result.metric_type == key.split(",")[0]
            assert result.metric_value == value and result.dataset_args is None  # the task's own few-shot

    # the raw YAML is the Hub's model-index layout
    import yaml

    front = yaml.safe_load(make_card(lineage["quantize"].path).split("---\n")[1])
    entry = front["model-index"][0]
    assert entry["name"] == "w8"
    result = entry["results"][0]
    assert result["task"] == {"type": "text-generation"} and result["dataset"]["name"] == "llmforge_arith_mc"
    assert {m["type"] for m in result["metrics"]} == {k.split(",")[0] for k in scores_of(report, lineage["quantize"])
                                                      ["llmforge_arith_mc"]}  # fmt: skip


def test_a_model_without_eval_reports_or_hub_id_has_no_model_index(tiny_model, tmp_path):
    from huggingface_hub import ModelCard

    card = make_card(tiny_model)  # a model pretrained here, no report beside it
    data = ModelCard(card).data
    assert data.eval_results is None and data.base_model is None and "model-index" not in card
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
