"""The chat template post-training renders chats with: `--chat-template FILE` (an input of the artifact by its
bytes, saved into the output's tokenizer) and the default a model without a template gets, stated on screen."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import chat_records, preference_records, write_jsonl
from transformers import AutoTokenizer, TrainerCallback

from llmforge.artifacts import Artifact
from llmforge.data.tokenizer import CHAT_TEMPLATE
from llmforge.errors import InputError
from llmforge.files import sha256_file
from llmforge.stages import dpo, sft

pytestmark = pytest.mark.usefixtures("one_thread")

# A template with no {% generation %} markers and no ChatML: '### role:' headers, replies ended by the EOS token.
HEADERS = (
    "{%- for m in messages %}{{- '### ' + m['role'] + ':\\n' + m['content'] }}"
    "{%- if m['role'] == 'assistant' %}{{- eos_token }}{%- endif %}{{- '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '### assistant:\\n' }}{%- endif %}"
)


class TrainData(TrainerCallback):
    """Keeps the dataset the trainer iterates (token ids and labels, as TRL prepared them)."""

    rows: list[dict] = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.rows = list(train_dataloader.dataset)


def small(stage=sft, **settings):
    return stage.Config(
        **{"batch_size": 4, "max_length": 96, "max_steps": 1, "learning_rate": 1e-3, **settings}
    )


def trained_text(tokenizer, row: dict) -> str:
    return tokenizer.decode(
        [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    )


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("chats") / "chat.jsonl", chat_records(8))


@pytest.fixture(scope="module")
def templateless(tmp_path_factory, tiny_model):
    """The tiny model as a plain directory whose tokenizer has no chat template (a base model)."""
    model = tmp_path_factory.mktemp("base") / "base"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns("artifact.json", "chat_template.jinja"))
    assert AutoTokenizer.from_pretrained(model).chat_template is None
    return model


def test_a_chat_template_file_trains_the_replies_and_lands_in_the_output(
    tmp_path, tiny_model, chat_data, capfd
):
    file = tmp_path / "headers.jinja"
    file.write_text(HEADERS)
    data = TrainData()
    out = sft.run(tiny_model, chat_data, tmp_path / "sft", small(chat_template=str(file)), callbacks=[data])
    assert "chat template: from the file given" in capfd.readouterr().err
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == HEADERS  # serving and eval render chats as training did
    # the loss fell on exactly the replies and the EOS that ends each, rendered by the file's template
    eos = tokenizer.eos_token
    assert sorted(trained_text(tokenizer, row) for row in data.rows) == sorted(
        "".join(m["content"] + eos for m in record["messages"] if m["role"] == "assistant")
        for record in chat_records(8)
    )
    assert all(tokenizer.decode(row["input_ids"]).startswith("### system:\n") for row in data.rows)
    artifact = Artifact.open(out)
    assert artifact.stats["chat_template"] == "file" and artifact.stats["examples"] == 8
    [entry] = [i for i in artifact.manifest["inputs"] if i.get("role") == "chat template"]
    assert entry["kind"] == "raw" and entry["fingerprint"] == sha256_file(file)
    assert artifact.config["chat_template"] == str(file)

    # the same bytes elsewhere: up to date (the path is not part of the fingerprint); other bytes: a new artifact
    moved = tmp_path / "elsewhere.jinja"
    shutil.copy(file, moved)
    assert sft.run(tiny_model, chat_data, tmp_path / "sft", small(chat_template=str(moved))) == out
    assert Artifact.open(out).manifest == artifact.manifest
    file.write_text(HEADERS.replace("### ", "## "))
    with pytest.raises(InputError, match="headers.jinja"):
        sft.run(tiny_model, chat_data, tmp_path / "sft", small(chat_template=str(file)))


def test_a_bad_chat_template_file_is_one_line(tmp_path, tiny_model, chat_data):
    with pytest.raises(InputError, match=r"^--chat-template .*missing.jinja: no such file"):
        sft.run(tiny_model, chat_data, tmp_path / "a", small(chat_template=str(tmp_path / "missing.jinja")))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(
        InputError, match=r"broken.jinja: the chat template cannot render a user/assistant chat"
    ):
        sft.run(tiny_model, chat_data, tmp_path / "b", small(chat_template=str(broken)))


def test_a_model_without_a_template_trains_chats_with_a_stated_default(
    tmp_path, templateless, chat_data, capfd
):
    out = sft.run(templateless, chat_data, tmp_path / "sft", small())
    notes = [line for line in capfd.readouterr().err.splitlines() if "has no chat template" in line]
    assert len(notes) == 1 and "using ChatML" in notes[0]
    assert AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE
    assert Artifact.open(out).stats["chat_template"] == "default-chatml"

    # dpo on conversational pairs too (TRL renders them with the default), and text data gets no template
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_records(8))
    out = dpo.run(templateless, pairs, tmp_path / "dpo", small(dpo, max_length=64))
    assert "using ChatML" in capfd.readouterr().err
    assert AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE
    texts = write_jsonl(
        tmp_path / "texts.jsonl", [{"text": f"Document {n} of a few words."} for n in range(8)]
    )
    out = sft.run(templateless, texts, tmp_path / "text", small())
    assert "chat template" not in capfd.readouterr().err
    assert AutoTokenizer.from_pretrained(out).chat_template is None
    assert "chat_template" not in Artifact.open(out).stats


def test_an_adapter_trained_with_its_own_template_chains_on_its_base(tmp_path, tiny_model, chat_data):
    file = tmp_path / "headers.jinja"
    file.write_text(HEADERS)
    adapter = sft.run(
        tiny_model, chat_data, tmp_path / "adapter", small(chat_template=str(file), lora={"enabled": True})
    )
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    assert AutoTokenizer.from_pretrained(adapter).chat_template == HEADERS
    # the adapter's template is the one its next stage renders with
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_records(8))
    out = dpo.run(adapter, pairs, tmp_path / "dpo", small(dpo, max_length=64, lora={"enabled": True}))
    assert AutoTokenizer.from_pretrained(out).chat_template == HEADERS
    assert Artifact.open(out).stats["chat_template"] == "model"

    # served beside its base, each renders chats with its own template; vLLM cannot do that and says so
    from llmforge.serving import models, vllm_backend
    from llmforge.stages import serve

    plan = models.plan(tiny_model, None, {"headers": str(adapter)})
    assert [m.chat_template for m in plan.models] == [None, HEADERS]
    with pytest.raises(InputError, match="adapter headers has a chat template of its own"):
        vllm_backend.command(plan, serve.Config(), 8000)
