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


def test_a_large_model_files_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """serve, chat and eval fingerprint a plain HF directory's or a .gguf file's content at every start: the sha256
    of a large file is remembered under its path, size, inode and times, and hashed again once it is written to;
    a file written moments ago, or a cache that cannot be written, is simply hashed every time."""
    import time

    from llmforge import files

    monkeypatch.setenv("LLMFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(files, "REMEMBER_HASHES_FROM", 1)  # the tiny file counts as large
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"a" * 4096)
    hash_file = files.sha256_file

    def hashed_again(path):
        raise AssertionError(f"{path} hashed again")

    first = files.model_file_sha256(weights)  # written just now: not remembered
    with monkeypatch.context() as patched, pytest.raises(AssertionError, match="hashed again"):
        patched.setattr(files, "sha256_file", hashed_again)
        files.model_file_sha256(weights)
    monkeypatch.setattr(files, "SETTLED_NS", 0)
    assert files.model_file_sha256(weights) == first == hash_file(weights)
    with monkeypatch.context() as patched:
        patched.setattr(files, "sha256_file", hashed_again)
        assert files.model_file_sha256(weights) == first  # remembered
    time.sleep(0.05)
    weights.write_bytes(b"b" * 4096)  # the same size, other bytes
    assert files.model_file_sha256(weights) == hash_file(weights) != first
    (tmp_path / "blocked").write_text("a file where the cache's folder would be")
    monkeypatch.setenv("LLMFORGE_CACHE", str(tmp_path / "blocked"))
    assert files.model_file_sha256(weights) == hash_file(weights)
