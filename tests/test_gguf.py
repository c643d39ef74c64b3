"""`llmforge quantize --method gguf-*`: GGUF files written by llama.cpp's own converter and quantizer, checked by
llama.cpp itself (llama-cpp-python): the same tokens, the same logits, the same answers as transformers."""

import json
from pathlib import Path

import pytest
from helpers import documents_artifact, llmforge, sentences, stats_mismatches, tokens_artifact
from test_quantize import manifest, stdlib_prose

from llmforge.errors import InputError
from llmforge.model import gguf
from llmforge.stages import quantize

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install-gguf)")
try:
    gguf.converter_dir()
except InputError as exc:
    pytest.skip(str(exc), allow_module_level=True)

SMALL = {"seq_len": 64, "eval_tokens": 512}
# Text a tokenizer can get wrong: digits, contractions, runs of spaces and newlines, accents, CJK, emoji, tags.
TRICKY = ["The 3 cats ate 1234 fish, didn't they?", "  two  spaces\n\n\ttab and\r\nCRLF   ", "naïve café Über",
          "日本語のテキスト 🚀🦙", "x=3.14; y = x**2 // 7", "<think>a tag</think> and <|im_end|> as text"]  # fmt: skip


@pytest.fixture(scope="module")
def tokens(tiny_tokenizer_dir, tmp_path_factory):
    return tokens_artifact(tmp_path_factory.mktemp("g") / "tokens", tiny_tokenizer_dir, sentences(300, seed=7),
                           val_fraction=0.2)  # fmt: skip


def gguf_fields(path: Path) -> dict:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    text = {name: bytes(fields[name].parts[-1]).decode() for name in
            ("general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre",
             "tokenizer.chat_template")}  # fmt: skip
    return text


def llama(path: Path, n_ctx: int = 256):
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_model_with_its_own_tokenizer_becomes_the_same_model_in_llama_cpp(
    arch, tiny_tokenizer_dir, tokens, tmp_path
):
    """llama.cpp's converter refuses a vocabulary it has never seen ("BPE pre-tokenizer was not recognized");
    llmforge names the regex its tokenizer splits with, and llama.cpp then tokenizes and computes as transformers."""
    import torch
    from helpers import tiny_model_artifact
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_model_artifact(tmp_path / "model", tiny_tokenizer_dir, seed=4)
    if arch == "qwen3":  # the same random weights as a Qwen3 (its QK-norm) model
        from llmforge.model.llama import build_config, build_model

        config = json.loads((model_dir / "config.json").read_text())
        qwen = build_model(build_config("tiny", config["vocab_size"], {"bos": config["bos_token_id"],
                           "eos": config["eos_token_id"], "pad": config["pad_token_id"]}, arch="qwen3",
                           max_position_embeddings=512), seed=4)  # fmt: skip
        qwen.save_pretrained(model_dir)
        (model_dir / "artifact.json").unlink()  # a plain Hugging Face directory now
    result = llmforge("quantize", model_dir, "--data", tokens, "-o", tmp_path / "f16", "--method", "gguf-f16",
                      *(f"--set={k}={v}" for k, v in SMALL.items()))  # fmt: skip
    out = Path(result.stdout.strip())
    assert out == tmp_path / "f16" and result.stdout.count("\n") == 1  # the path alone on stdout
    m = manifest(out)
    assert m["kind"] == "gguf" and m["extra"]["format"] == "gguf" and m["extra"]["method"] == "gguf-f16"
    assert [f["path"] for f in m["files"]] == ["model.gguf"]
    assert m["extra"]["gguf"]["llama_cpp_python"]
    fields = gguf_fields(out / "model.gguf")
    assert fields["general.architecture"] == arch and fields["general.name"] == "f16"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "qwen2"
    # the template serves as it is, without the training-only {% generation %} markers
    template = fields["tokenizer.chat_template"]
    assert gguf.GENERATION_TAG.search((tiny_tokenizer_dir / "chat_template.jinja").read_text())
    assert "<|im_start|>" in template and not gguf.GENERATION_TAG.search(template)
    assert (
        not (out / "checkpoints" / "gguf-input").exists() and (out / "checkpoints" / "convert.log").is_file()
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    llm = llama(out / "model.gguf")
    for text in TRICKY:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text
    # the chat template's control tokens are single tokens in both
    assert (
        llm.tokenize(b"<|im_start|>user", add_bos=False, special=True)
        == tokenizer("<|im_start|>user")["input_ids"]
    )

    window = tokenizer(" ".join(sentences(20, seed=1)))["input_ids"][:200]
    llm.eval(window)
    theirs = torch.from_numpy(llm.scores[: len(window)]).float()
    llm.close()
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        ours = reference(torch.tensor([window])).logits[0].float()
    # f16 weights: the same next-token choice nearly everywhere, and the same distribution
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.97
    assert float(torch.nn.functional.cosine_similarity(theirs.flatten(), ours.flatten(), dim=0)) > 0.999
    assert abs(m["stats"]["perplexity_delta_pct"]) < 0.1 and m["stats"]["within_budget"]


def test_k_quants_are_made_by_llama_cpp_and_import_takes_them_back(tiny_model, tokens, tmp_path):
    """Q4_K_M through llama.cpp's quantizer from the converter's f16 file (not kept): smaller than Q8_0, with
    its perplexity measured by llama.cpp; `llmforge import` reads the artifact back as a model."""
    q8 = quantize.run(tiny_model, tokens, tmp_path / "q8", quantize.Config(method="gguf-q8_0", **SMALL))
    q4 = quantize.run(tiny_model, tokens, tmp_path / "q4", quantize.Config(method="gguf-q4_k_m", **SMALL))
    s8, s4 = manifest(q8)["stats"], manifest(q4)["stats"]
    assert s8["group_size"] == 32 and s4["group_size"] == 256
    assert s4["bytes_after"] < s8["bytes_after"] < s8["bytes_before"]
    assert s8["perplexity_before"] == s4["perplexity_before"] and s4["perplexity_after"] > 1
    assert [p.name for p in (q4 / "checkpoints").iterdir()] == ["convert.log"]  # no f16 copy left behind
    assert stats_mismatches(q4) == [] and "F32" in s4["tensor_types"] and "Q8_0" in s8["tensor_types"]
    assert llmforge("show", q4).returncode == 0
    card = llmforge("card", q4).stdout  # a card for the Hub, as GGUF releases carry: llama.cpp's commands
    assert "library_name: gguf" in card and "- gguf-q4_k_m" in card and "- gguf\n" in card
    assert f"llama-server -m {q4}/model.gguf" in card and "| quantization | gguf-q4_k_m (gguf) |" in card

    model = llmforge("import", q4, "-o", tmp_path / "imported").stdout.strip()
    imported = manifest(model)
    assert imported["kind"] == "model"
    # its input is the gguf artifact, so lineage walks on through quantize to the model it was made from
    assert [(i["kind"], i["fingerprint"]) for i in imported["inputs"]] == [
        ("gguf", manifest(q4)["fingerprint"])
    ]
    lineage = llmforge("lineage", model).stdout + llmforge("lineage", model).stderr
    assert "quantize" in lineage and Path(tiny_model).name in lineage
    # a stage that loads models through transformers names the way back instead of failing on a missing config
    refused = llmforge("eval", q4, "-o", tmp_path / "e", check=False)
    assert refused.returncode == 2 and "llmforge import" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_an_adapter_is_merged_and_converted_and_nothing_large_is_left_behind(tiny_model, tokens, tmp_path):
    from helpers import random_adapter_artifact

    adapter = random_adapter_artifact(tmp_path / "adapter", tiny_model, seed=3)
    out = quantize.run(adapter, tokens, tmp_path / "q8", quantize.Config(method="gguf-q8_0", **SMALL))
    m = manifest(out)
    assert [i["kind"] for i in m["inputs"]] == ["adapter", "tokens"] and m["stats"][
        "algorithm"
    ] == "llama.cpp"
    assert m["extra"]["tokenizer_fingerprint"] == manifest(tiny_model)["extra"]["tokenizer_fingerprint"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["convert.log"]  # no merged weights
    assert abs(m["stats"]["perplexity_delta_pct"]) < 1.0


def test_what_gguf_cannot_do_is_refused_in_one_line_before_any_work(tiny_model, tokens, tmp_path):
    no_converter = llmforge("quantize", tiny_model, "--data", tokens, "-o", tmp_path / "a", "--method", "gguf-q8_0",
                            env={"LLAMA_CPP_DIR": str(tmp_path)}, check=False)  # fmt: skip
    assert no_converter.returncode == 2 and "convert_hf_to_gguf.py" in no_converter.stderr
    assert len(no_converter.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    ignore = llmforge("quantize", tiny_model, "--data", tokens, "-o", tmp_path / "c", "--method", "gguf-q8_0", "--set",
                      "ignore=[lm_head]", check=False)  # fmt: skip
    assert ignore.returncode == 2 and "leaves each tensor's type to llama.cpp" in ignore.stderr
    assert len(ignore.stderr.strip().splitlines()) == 1 and not (tmp_path / "c").exists()
    group = llmforge("quantize", tiny_model, "--data", tokens, "-o", tmp_path / "b", "--method", "gguf-q4_k_m",
                     "--group-size", "64", check=False)  # fmt: skip
    assert group.returncode == 2 and "llama.cpp's fixed blocks" in group.stderr
    assert len(group.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_a_pre_tokenizer_llama_cpp_does_not_know_stops_the_stage_with_the_converters_reason(
    tiny_model, tokens, tmp_path
):
    """A tokenizer whose split regex llmforge does not know (here: digits in threes) is not guessed at."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "artifact.json").unlink()
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    split = tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    split["Regex"] = split["Regex"].replace(r"|\p{N}|", r"|\p{N}{1,3}|")
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    result = llmforge("quantize", model, "--data", documents_artifact(tmp_path / "docs", sentences(100)), "-o",
                      tmp_path / "out", "--method", "gguf-f16", check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        "llama.cpp's converter failed: NotImplementedError: BPE pre-tokenizer was not recognized"
        in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.xdist_group("smollm2")
def test_smollm2_in_llama_cpp_costs_what_the_report_says_and_answers_as_before(smollm2, tmp_path, capsys):
    """A real trained model: f16 is the model itself, Q8_0 within the 1% budget, Q4_K_M smaller and costlier, all
    measured by llama.cpp on held-out real text; through the f16 GGUF's own chat template llama.cpp gives
    transformers' greedy answer word for word (Q8_0 already flips this 135M model's near-tie first token: "The"
    25.33 vs "L" 25.24)."""
    import torch

    from llmforge.model.loading import load_model, load_tokenizer, resolve_model

    docs = documents_artifact(tmp_path / "docs", stdlib_prose())
    stats = {}
    for method in ("gguf-f16", "gguf-q8_0", "gguf-q4_k_m"):
        out = quantize.run(smollm2, docs, tmp_path / method,
                           quantize.Config(method=method, seq_len=256, eval_tokens=768))  # fmt: skip
        stats[method] = manifest(out)["stats"]
    with capsys.disabled():  # the figures README's quantize section quotes (shown with pytest -s)
        for method, s in stats.items():
            print(f"\nSmolLM2-135M-Instruct {method}: perplexity {s['perplexity_before']} -> {s['perplexity_after']} "
                  f"({s['perplexity_delta_pct']:+.2f}%), {s['bytes_before']:,} -> {s['bytes_after']:,} bytes")  # fmt: skip
    f16, q8, q4 = stats["gguf-f16"], stats["gguf-q8_0"], stats["gguf-q4_k_m"]
    # SmolLM2's 576-wide rows are not a multiple of the K-quants' 256: most of Q4_K_M is Q5_0, and the stats say so
    assert q4["tensor_types"].startswith("Q5_0") and "Q4_K" in q4["tensor_types"]
    assert (
        abs(f16["perplexity_delta_pct"]) < 0.1
        and q8["within_budget"]
        and abs(q8["perplexity_delta_pct"]) < 1.0
    )
    assert (
        q4["perplexity_delta_pct"] > q8["perplexity_delta_pct"] and q4["compression"] > q8["compression"] > 3
    )

    question = [{"role": "user", "content": "What is the capital of France?"}]
    source = resolve_model(smollm2, "eval")
    tokenizer = load_tokenizer(source)
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]  # fmt: skip
    with torch.inference_mode():
        expected = (
            load_model(source)
            .eval()
            .generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1] :]
        )
    llm = llama_cpp.Llama(str(tmp_path / "gguf-f16" / "model.gguf"), n_ctx=512, verbose=False, n_threads=2)
    answer = llm.create_chat_completion(question, max_tokens=12, temperature=0.0, top_k=1)
    llm.close()
    text = answer["choices"][0]["message"]["content"]
    assert text == tokenizer.decode(expected, skip_special_tokens=True) and "Paris" in text
