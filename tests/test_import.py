"""`llmforge import`: external models become model artifacts whose lineage ends at the exact source files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli_env, documents_artifact, llmforge, sentences, smollm2_gguf

from llmforge.artifacts import MANIFEST, Artifact, sha256_file
from llmforge.errors import InputError
from llmforge.model.importing import locate
from llmforge.model.loading import hash_directory, load_model, load_tokenizer, resolve_model
from llmforge.stages.import_model import Config, run


def plain_copy(artifact: Path, directory: Path) -> Path:
    """The Hugging Face directory inside a model artifact, without its manifest: a model from elsewhere."""
    shutil.copytree(artifact, directory, ignore=shutil.ignore_patterns(MANIFEST))
    return directory


@pytest.mark.xdist_group("smollm2")
def test_a_gguf_file_becomes_a_model_artifact_that_answers(smollm2):
    gguf = smollm2_gguf()
    artifact = Artifact.open(smollm2)
    assert (artifact.kind, artifact.stage) == ("model", "import")
    assert artifact.verify() == []
    [source] = artifact.manifest["inputs"]
    assert source["kind"] == "raw" and source["fingerprint"] == sha256_file(gguf)  # lineage ends at the file
    assert artifact.extra["source"]["kind"] == "gguf"
    assert artifact.extra["source"]["metadata"]["organization"] == "HuggingFaceTB"
    names = {entry["path"] for entry in artifact.manifest["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "generation_config.json"} <= names  # fmt: skip
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())
    assert artifact.stats["parameters"] == 134_515_008 and artifact.stats["dtype"] == "float32"

    source = resolve_model(smollm2, "eval")  # every stage takes it
    tokenizer = load_tokenizer(source)
    # the GGUF says <|im_end|> ends a turn; transformers' GGUF converter alone would name <|im_start|>
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                                 "<|im_end|>")  # fmt: skip
    model = load_model(source).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])
    assert "Paris" in answer and answer.endswith("<|im_end|>")  # and it stops on its end-of-turn token

    assert run(gguf, smollm2) == smollm2  # the same source and settings: up to date
    assert Artifact.open(smollm2).manifest == artifact.manifest


def test_a_hugging_face_directory_is_imported_in_bf16(tiny_model, tmp_path):
    from safetensors import safe_open

    plain = plain_copy(tiny_model, tmp_path / "downloaded")
    out = run(plain, tmp_path / "imported", Config(dtype="bf16", hub_id="someone/tiny-llama"))
    artifact = Artifact.open(out)
    [source] = artifact.manifest["inputs"]
    assert source["kind"] == "raw" and source["fingerprint"] == hash_directory(plain)
    assert artifact.extra["source"]["hub_id"] == "someone/tiny-llama"  # the card's base_model
    assert artifact.stats["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}
    # the source's own generation settings and tokenizer travel unchanged
    assert (
        json.loads((out / "generation_config.json").read_text())["eos_token_id"]
        == json.loads((plain / "generation_config.json").read_text())["eos_token_id"]
    )
    assert artifact.extra["tokenizer_fingerprint"] == resolve_model(plain, "sft").tokenizer_fingerprint

    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        before = load_model(resolve_model(plain, "eval")).eval()(ids).logits
        after = load_model(resolve_model(out, "eval")).eval()(ids).logits.float()
    assert torch.allclose(before, after, atol=0.05)

    with pytest.raises(InputError, match="holds a different model artifact .*config.dtype: 'bf16' -> 'fp32'"):
        run(plain, out, Config(dtype="fp32"))


def test_models_that_run_their_own_code_need_explicit_permission(tmp_path):
    directory = tmp_path / "custom"
    directory.mkdir()
    config = {
        "model_type": "custom",
        "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"},
    }
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"custom: its config.json loads custom code .*--trust-remote-code"):
        locate(directory)
    assert locate(directory, trust_remote_code=True).kind == "hf-dir"


def test_hub_ids_need_online(monkeypatch):
    monkeypatch.setenv("LLMFORGE_ONLINE", "0")
    with pytest.raises(InputError, match=r"HuggingFaceTB/SmolLM2-135M-Instruct: .*`llmforge --online import"):
        run("HuggingFaceTB/SmolLM2-135M-Instruct", "unused")
    with pytest.raises(InputError, match="no/such/thing: no such file or directory"):
        locate("no/such/thing")


COMMIT = "0123456789abcdef" * 2 + "01234567"


def hub_cache(root: Path, hub_id: str, model: Path, refs: tuple[str, ...] = ("main",)) -> Path:
    """A Hugging Face cache holding `model`'s files as `hub_id` at COMMIT, in the layout `hf download` writes:
    models--ORG--NAME/snapshots/COMMIT, and refs/BRANCH naming the commit."""
    repo = root / f"models--{hub_id.replace('/', '--')}"
    snapshot = plain_copy(model, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


def test_a_hub_id_in_the_local_cache_imports_offline_with_its_commit(tiny_model, tmp_path, monkeypatch):
    """Downloaded once (`hf download`, on a machine with a network), then used offline: the import records the Hub
    id and the commit as an online import does; a directory inside the cache is traced to them too."""
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("LLMFORGE_ONLINE", "0")
    snapshot = hub_cache(cache, "Org/Tiny", tiny_model, refs=("main", "v1"))
    for revision, out in ((None, tmp_path / "main"), ("v1", tmp_path / "v1")):
        artifact = Artifact.open(run("Org/Tiny", out, Config(revision=revision)))
        [source] = artifact.manifest["inputs"]
        assert (source["kind"], source["path"], source["commit"], source["revision"]) == (
            "hub", "Org/Tiny", COMMIT, revision
        )  # fmt: skip
        assert artifact.extra["source"]["hub_id"] == "Org/Tiny"
    # vLLM's dtype and context are read from the cached config
    from llmforge.serving.vllm_backend import model_settings

    assert model_settings("Org/Tiny") == json.loads((snapshot / "config.json").read_text())
    # stages take it too; a newer download of the same id (main moved on) is another input
    before = resolve_model("Org/Tiny", "sft").fingerprint
    shutil.copytree(snapshot, snapshot.with_name("f" * 40))
    (cache / "models--Org--Tiny" / "refs" / "main").write_text("f" * 40)
    assert resolve_model("Org/Tiny", "sft").fingerprint != before
    [source] = Artifact.open(run(snapshot, tmp_path / "path")).manifest["inputs"]
    assert (source["kind"], source["hub_id"], source["commit"]) == ("raw", "Org/Tiny", COMMIT)
    with pytest.raises(
        InputError, match=r"^Org/Tiny: no such directory, and no copy at v2 in the local Hugging"
    ):
        run("Org/Tiny", tmp_path / "v2", Config(revision="v2"))
    (hub_cache(cache, "Org/Partial", tiny_model) / "model.safetensors").unlink()  # `hf download` cut short
    with pytest.raises(
        InputError, match=r"^Org/Partial@0123456789ab in the local Hugging Face cache: no model"
    ):
        run("Org/Partial", tmp_path / "partial")


def test_online_a_hub_id_downloads_its_model_files_and_later_runs_find_them_offline(tiny_model, tmp_path):
    """`llmforge --online import org/name`: the Hub resolves main to a commit, only the model's files come down (not
    the other copies a repository carries), the commit is recorded, and the cache names main as `hf download` does,
    so the same id works offline after."""
    from helpers import fake_hub

    names = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "chat_template.jinja"]  # fmt: skip
    files = {name: (tiny_model / name).read_bytes() for name in names}
    files["original/consolidated.pth"] = b"another copy of the weights"
    cache = tmp_path / "hf"
    with fake_hub({"Org/Tiny": files}, COMMIT) as (endpoint, asked):
        env = {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0"}
        llmforge("--online", "import", "Org/Tiny", "-o", tmp_path / "online", env=env)
    downloaded = {a.split(f"/resolve/{COMMIT}/")[-1] for a in asked if a.startswith("GET /Org/Tiny/resolve/")}
    assert downloaded == set(names), asked
    [ref] = Artifact.open(tmp_path / "online").manifest["inputs"]
    assert (ref["path"], ref["commit"]) == ("Org/Tiny", COMMIT)
    assert (cache / "models--Org--Tiny" / "refs" / "main").read_text() == COMMIT
    offline = Artifact.open(Path(llmforge("import", "Org/Tiny", "-o", tmp_path / "offline",
                                          env={"HF_HUB_CACHE": str(cache)}).stdout.strip()))  # fmt: skip
    assert offline.manifest["inputs"][0]["fingerprint"] == ref["fingerprint"]


def test_every_stage_takes_a_cached_hub_id_offline(tiny_model, tmp_path):
    cache = tmp_path / "hf"
    hub_cache(cache, "Org/Tiny", tiny_model)
    env = {"HF_HUB_CACHE": str(cache)}
    chat = subprocess.run([sys.executable, "-m", "llmforge", "chat", "Org/Tiny", "--max-tokens", "3", "--temperature",
                           "0"], input="hello\n", capture_output=True, text=True, env=cli_env(env), timeout=300)  # fmt: skip
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    assert f"Org/Tiny: the local Hugging Face cache's copy, commit {COMMIT[:12]} (offline)" in chat.stderr
    missing = llmforge("chat", "Org/Other", env=env, check=False)
    assert missing.returncode == 2
    assert "Org/Other: no such model directory, and no copy in the local Hugging Face cache" in missing.stderr
    # quantize copies the tokenizer from the cache's snapshot (it looked for files under the id itself)
    docs = documents_artifact(tmp_path / "docs", sentences(100))
    quantized = Path(llmforge("quantize", "Org/Tiny", "--data", docs, "-o", tmp_path / "q", "--method", "torchao-int8",
                              "--set", "seq_len=64", "--set", "eval_tokens=256", env=env).stdout.strip())  # fmt: skip
    assert (quantized / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()
    # its card reads what the model is from the cached snapshot (the base is no artifact)
    from llmforge.card.lineage import safetensors_parameters
    from llmforge.console import format_value

    count = format_value(safetensors_parameters(tiny_model, "model*.safetensors"))
    card = llmforge("card", quantized, env=env).stdout
    assert f"A llama quantized model of {count} parameters" in card, card[:600]


def test_what_cannot_be_imported_is_refused_plainly(tiny_model, tmp_path):
    with pytest.raises(InputError, match="already an llmforge artifact"):
        locate(tiny_model)
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=r"model.bin: a model file must be .gguf"):
        locate(weights)
    (tmp_path / "a.gguf").write_bytes(b"not gguf at all")
    (tmp_path / "b.gguf").write_bytes(b"not gguf either")
    with pytest.raises(InputError, match=r"not a Hugging Face model directory \(2 .gguf files; name one\)"):
        locate(tmp_path)
    with pytest.raises(InputError, match="a.gguf: not a readable GGUF file"):
        locate(tmp_path / "a.gguf")
    with pytest.raises(InputError, match="--revision v2: only for Hub ids"):
        locate(plain_copy(tiny_model, tmp_path / "plain"), revision="v2")
