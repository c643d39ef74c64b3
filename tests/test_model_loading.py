"""Model artifacts load in transformers with their tokenizer and chat template, no conversion step."""

import pytest

from llmforge.errors import InputError
from llmforge.model.loading import load_model, load_tokenizer, resolve_model


def test_model_artifact_loads_and_generates(tiny_model):
    import torch

    source = resolve_model(tiny_model, "eval")
    assert source.kind == "model" and source.tokenizer_fingerprint
    tokenizer = load_tokenizer(source)
    model = load_model(source)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    assert model.generation_config.eos_token_id == [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]


def test_plain_hf_directory_and_bad_paths(tiny_model, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    (plain / "artifact.json").unlink()
    source = resolve_model(plain, "sft")
    assert source.kind == "hf-dir" and source.ref().kind == "raw"
    assert resolve_model(plain, "sft").fingerprint == source.fingerprint
    with pytest.raises(InputError, match="no such model directory.*--online"):
        resolve_model("someorg/somemodel", "sft")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(tmp_path / "empty", "sft")
    (tmp_path / "my.jinja").write_text("{{ messages }}")
    with pytest.raises(InputError, match="my.jinja: a chat template file, not a model"):
        resolve_model(tmp_path / "my.jinja", "eval")  # `llmforge eval M --chat-template my.jinja`
