"""vLLM for real, on CPU: `serve --backend vllm`, `eval --backend vllm` and `quality annotate --backend vllm` run vLLM's CPU build from its own
environment (`make install-vllm` builds .venv-vllm; .ci/run builds it before the suite). Without it every test here
skips, saying so. vLLM takes a minute or more to load on 2 cores: the module starts its servers once, together."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from families import family_model
from helpers import (
    cli_env,
    llmforge,
    random_adapter_artifact,
    sentences,
    tiny_model_artifact,
    tokens_artifact,
    write_jsonl,
)

from llmforge.serving import vllm_backend

FOUND = vllm_backend.find(explicit=True)
if isinstance(FOUND, str):
    pytest.skip(
        f"vLLM's environment is not here ({FOUND}): `make install-vllm` builds it", allow_module_level=True
    )

# one worker runs them all (the servers are module fixtures); startup counts against the first test's timeout
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm"), pytest.mark.timeout(1800)]
KEY = "sk-vllm-test"
CHATS = ["What is 3 + 4?", "Name a colour.", "Say hello."]
PROMPTS = ["The model learns", "Once upon a time", "1, 2, 3,"]
# one GiB of KV cache: vLLM's CPU default sizes it from free memory
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


class Server:
    """`llmforge serve MODEL --port 0 ...` in a subprocess; its first stdout line is the URL."""

    def __init__(self, model: Path, *args: str, log: Path):
        self.log = log
        command = [
            sys.executable,
            "-m",
            "llmforge",
            "serve",
            str(model),
            "--port",
            "0",
            "--api-key",
            KEY,
            *args,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                                        env=cli_env(VLLM_ENV))  # fmt: skip
        self.url = ""

    def wait(self, timeout: float = 1500) -> Server:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        self.url = self.process.stdout.readline().strip() if ready else ""
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise AssertionError(f"the server did not start: {self.url!r}\n{self.log.read_text()[-4000:]}")
        return self

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=KEY, max_retries=0, timeout=300)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    return random_adapter_artifact(tmp_path_factory.mktemp("adapter") / "first", tiny_model, seed=1, rank=4)


@pytest.fixture(scope="module")
def w4a16(tiny_model, tiny_tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny model quantized to W4A16 compressed-tensors by `llmforge quantize` (the main environment):
    symmetric ("q") and with a zero point per group ("q-zp", the layout of AWQ checkpoints)."""
    from llmforge.stages import quantize

    root = tmp_path_factory.mktemp("w4a16")
    tokens = tokens_artifact(root / "tokens", tiny_tokenizer_dir, sentences(200))
    return {name: quantize.run(tiny_model, tokens, root / name, quantize.Config(
                method="w4a16", algorithm="rtn", zero_point=zero_point, seq_len=64, eval_tokens=512))
            for name, zero_point in (("q", False), ("q-zp", True))}  # fmt: skip


@pytest.fixture(scope="module")
def servers(tiny_model, adapter, w4a16, tmp_path_factory):
    """vLLM serving the tiny model with the adapter by name, vLLM serving the W4A16 artifact, and the embedded
    server with the same model and adapter; the vLLM ones load side by side."""
    logs = tmp_path_factory.mktemp("servers")
    started = {
        "vllm": Server(
            tiny_model, "--backend", "vllm", "--adapter", f"first={adapter}", log=logs / "vllm.log"
        ),
        **{name: Server(path, "--backend", "vllm", log=logs / f"{name}.log") for name, path in w4a16.items()},
        "embedded": Server(
            tiny_model, "--backend", "embedded", "--adapter", f"first={adapter}", log=logs / "embedded.log"
        ),  # fmt: skip
    }
    try:
        yield {name: server.wait() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def greedy(client, model: str) -> list[tuple[str, int]]:
    """Chat and completion answers, greedy, through the official client: (text, completion tokens) each. A random
    model emits byte tokens that are no UTF-8: the embedded server writes U+FFFD for them where vLLM's detokenizer
    holds incomplete bytes back, so the replacement character is left out of the comparison."""
    chats = [client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                            temperature=0, max_tokens=16) for text in CHATS]  # fmt: skip
    completions = [client.completions.create(model=model, prompt=text, temperature=0, max_tokens=16)
                   for text in PROMPTS]  # fmt: skip
    texts = [c.choices[0].message.content for c in chats] + [c.choices[0].text for c in completions]
    return [(text.replace("\ufffd", ""), c.usage.completion_tokens)
            for text, c in zip(texts, chats + completions, strict=True)]  # fmt: skip


def test_vllm_serves_the_tiny_model_and_its_adapter_greedy_like_the_embedded_server(
    servers, tiny_model, adapter
):
    from llmforge.model.loading import resolve_model

    vllm, embedded = servers["vllm"], servers["embedded"]
    assert "starting vLLM" in vllm.log.read_text() and "--enforce-eager" in vllm.log.read_text()
    client = vllm.client()
    assert {m.id for m in client.models.list()} == {"tiny", "first"}
    base = greedy(client, "tiny")
    assert any(text for text, _ in base) and base == greedy(embedded.client(), "tiny")
    tuned = greedy(client, "first")  # the adapter, by name
    assert tuned == greedy(embedded.client(), "first") and tuned != base
    # the fingerprint header on every answer; the API key is enforced
    response = httpx.post(f"{vllm.url}/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}, timeout=300)  # fmt: skip
    assert response.status_code == 200
    assert response.headers["x-llmforge-fingerprint"] == resolve_model(tiny_model, "serve").fingerprint
    refused = httpx.post(f"{vllm.url}/completions", headers={"Authorization": "Bearer wrong"},
                         json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}, timeout=300)  # fmt: skip
    assert refused.status_code == 401


def test_vllm_serves_gemma3s_sliding_window_layers_greedy_like_the_embedded_server(
    tiny_tokenizer_dir, tmp_path
):
    """Gemma 3 (a tiny random one in its own chat template) alternates sliding-window and global attention layers;
    its window (8 tokens) is shorter than every prompt here, so both servers answer through it."""
    source, _ = family_model("gemma3", tiny_tokenizer_dir, tmp_path / "gemma3")
    started = {backend: Server(source, "--backend", backend, log=tmp_path / f"{backend}.log")
               for backend in ("vllm", "embedded")}  # fmt: skip
    try:
        answers = {backend: greedy(server.wait().client(), "gemma3") for backend, server in started.items()}
    finally:
        for server in started.values():
            server.stop()
    assert any(text for text, _ in answers["vllm"]) and answers["vllm"] == answers["embedded"]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_vllm_serves_a_mixture_of_experts_greedy_like_the_embedded_server(arch, tiny_tokenizer_dir, tmp_path):
    """A mixture of experts as pretrain writes one (Mixtral; Qwen3-MoE, 4 experts, top-2): vLLM's fused-MoE
    kernels route and answer as transformers does (weights drawn wide, so that answers vary)."""
    from llmforge.data.tokenizer import load_tokenizer
    from llmforge.model.llama import build_config, build_model, special_ids_of
    from llmforge.model.loading import save_model_payload

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    config = build_config("tiny", len(tokenizer), special_ids_of(tokenizer), arch=arch, num_experts=4,
                          initializer_range=0.3, max_position_embeddings=256)  # fmt: skip
    source = tmp_path / "moe"
    save_model_payload(build_model(config, seed=5), tokenizer, source)
    started = {backend: Server(source, "--backend", backend, log=tmp_path / f"{backend}.log")
               for backend in ("vllm", "embedded")}  # fmt: skip
    try:
        answers = {backend: greedy(server.wait().client(), "moe") for backend, server in started.items()}
    finally:
        for server in started.values():
            server.stop()
    assert any(text for text, _ in answers["vllm"]) and answers["vllm"] == answers["embedded"]


def test_logprobs_n_and_echo_answer_alike_from_vllm_and_the_embedded_server(servers):
    """The OpenAI surface beyond plain chat, the same calls against both: log-probabilities of the greedy tokens
    and their top alternatives (the model's own log-softmax in both), `n` choices, and prompt scoring with `echo`
    (what lm-eval's local-completions sends)."""
    vllm, embedded = servers["vllm"].client(), servers["embedded"].client()

    def chat_logprobs(client):
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": CHATS[0]}],
                                               temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)  # fmt: skip
        return [
            (t.logprob, [top.logprob for top in t.top_logprobs]) for t in reply.choices[0].logprobs.content
        ]

    ours, theirs = chat_logprobs(embedded), chat_logprobs(vllm)
    assert len(ours) == len(theirs) == 6
    for (mine, my_top), (other, other_top) in zip(ours, theirs, strict=True):
        assert mine == pytest.approx(other, abs=2e-3) and my_top == pytest.approx(other_top, abs=2e-3)

    def echoed(client):
        reply = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=1, temperature=0, echo=True,
                                          logprobs=1)  # fmt: skip
        return reply.choices[0].logprobs.token_logprobs

    ours, theirs = echoed(embedded), echoed(vllm)
    assert ours[0] is None and theirs[0] is None and len(ours) == len(theirs) > 2
    assert ours[1:] == pytest.approx(theirs[1:], abs=2e-3)

    for client in (vllm, embedded):
        reply = client.completions.create(model="tiny", prompt=PROMPTS[1], n=3, max_tokens=4, temperature=1.0,
                                          seed=7)  # fmt: skip
        assert (
            sorted(c.index for c in reply.choices) == [0, 1, 2] and 3 <= reply.usage.completion_tokens <= 12
        )


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                                          "required": ["city"], "additionalProperties": False}}}  # fmt: skip
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def streamed_call(client, **settings) -> tuple[set[str], str, str, str | None]:
    """A streamed tool call put together from its deltas: (ids, name, arguments text, last finish reason)."""
    ids, name, arguments, finish = set(), "", "", None
    for chunk in client.chat.completions.create(**settings, stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                assert call.index == 0 and not choice.delta.content, chunk
                ids |= {call.id} if call.id else set()
                name += (call.function and call.function.name) or ""
                arguments += (call.function and call.function.arguments) or ""
    return ids, name, arguments, finish


def test_forced_tool_calls_come_back_parsed_whole_and_streamed_from_vllm_as_from_the_embedded_server(servers):
    """`tools` with a named and a "required" `tool_choice`, whole and streamed: vLLM runs with the tool-call parser
    of the model's template (hermes here), and both servers answer with a call to that function whose arguments
    hold to its parameter schema (llmforge turns vLLM's strict structural tag off: it left the random model's
    arguments `false`). The streamed deltas add up to the same call. Measured differences: vLLM answers a named
    call with finish_reason "stop" (the embedded server: "tool_calls"), writes the forced JSON compact and
    streams the arguments a token at a time (the embedded server: once the call is closed)."""
    assert "--tool-call-parser hermes" in servers["vllm"].log.read_text()
    for name in ("vllm", "embedded"):
        client = servers[name].client()
        for choice in (NAMED, "required"):
            settings = {"model": "tiny", "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER],
                        "max_tokens": 100, "temperature": 0, "tool_choice": choice}  # fmt: skip
            reply = client.chat.completions.create(**settings)
            assert reply.choices[0].message.tool_calls, (name, choice, reply.choices[0].model_dump())
            (call,) = reply.choices[0].message.tool_calls
            assert call.function.name == "get_weather" and not reply.choices[0].message.content, (
                name,
                choice,
            )
            arguments = json.loads(call.function.arguments)
            assert arguments["city"] in ("Paris", "Rome") and set(arguments) == {"city"}, (name, choice)
            ids, streamed_name, streamed_arguments, finish = streamed_call(client, **settings)
            assert len(ids) == 1 and streamed_name == "get_weather", (name, choice)
            assert json.loads(streamed_arguments) == arguments, (name, choice)  # greedy: the same call
            assert finish == reply.choices[0].finish_reason, (name, choice)
            expected = "stop" if name == "vllm" and choice == NAMED else "tool_calls"
            assert finish == expected, (name, choice)


def test_response_format_json_from_vllm_as_from_the_embedded_server(servers):
    """`response_format` json_schema and json_object through vLLM's xgrammar (whitespace off, as llmforge starts it)
    and the embedded server's llguidance: JSON that holds to the schema, ending by itself; a schema no grammar can
    be made of is a 400 from both."""
    import jsonschema
    from openai import BadRequestError

    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "unit": {"enum": ["C", "F"]}},
              "required": ["answer", "unit"], "additionalProperties": False}  # fmt: skip
    formats = [
        {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
        {"type": "json_object"},
    ]
    for name in ("vllm", "embedded"):
        client = servers[name].client()
        for response_format, must_hold in zip(formats, (schema, {"type": "object"}), strict=True):
            answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": CHATS[0]}],
                                                    max_tokens=60, temperature=0, response_format=response_format)  # fmt: skip
            assert answer.choices[0].finish_reason == "stop", (name, answer.choices[0].model_dump())
            jsonschema.validate(json.loads(answer.choices[0].message.content), must_hold)
        wizard = {"type": "object", "properties": {"a": {"type": "wizard"}}}
        with pytest.raises(BadRequestError, match="wizard"):
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                           response_format={"type": "json_schema",
                                                            "json_schema": {"name": "x", "schema": wizard}})  # fmt: skip


@pytest.mark.parametrize("name", ["q", "q-zp"])
def test_vllm_serves_a_w4a16_artifact_in_bfloat16(servers, w4a16, name):
    from llmforge.model.loading import resolve_model

    server = servers[name]
    assert "--dtype bfloat16" in server.log.read_text()  # its float32 CPU kernel is missing
    client = server.client()
    answer = client.chat.completions.with_raw_response.create(
        model=name, messages=[{"role": "user", "content": CHATS[0]}], temperature=0, max_tokens=8
    )
    assert answer.headers["x-llmforge-fingerprint"] == resolve_model(w4a16[name], "serve").fingerprint
    parsed = answer.parse()
    assert parsed.usage.completion_tokens > 0 and parsed.choices[0].finish_reason in ("stop", "length")
    text = (
        client.completions.create(model=name, prompt=PROMPTS[0], temperature=0, max_tokens=8).choices[0].text
    )
    assert text


def test_eval_with_vllm_scores_like_hf_within_the_standard_error(tiny_model, tmp_path, monkeypatch):
    from llmforge.stages import eval as eval_stage

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")

    scores = {}
    for backend in ("hf", "vllm"):
        config = eval_stage.Config(tasks=["llmforge_arith_mc"], backend=backend)
        started = time.monotonic()
        out = eval_stage.run([str(tiny_model)], tmp_path / backend, config)
        results = json.loads((out / "results.json").read_text())
        scores[backend] = results["results"]["llmforge_arith_mc"]
        print(f"{backend}: {time.monotonic() - started:.0f}s {scores[backend]}")
        assert results["llmforge"]["backend"] == backend
    assert results["config"]["model"] == "vllm"
    assert results["config"]["model_args"]["server"].startswith("vLLM")
    for metric in ("acc,none", "acc_norm,none"):
        hf, vllm = scores["hf"][metric], scores["vllm"][metric]
        stderr = scores["hf"][metric.replace(",", "_stderr,")]
        assert abs(hf - vllm) <= stderr, (metric, hf, vllm, stderr)


def test_eval_refuses_an_adapter_on_vllms_cpu_build_before_any_work(adapter, tmp_path):
    from llmforge.errors import InputError
    from llmforge.stages import eval as eval_stage

    if not FOUND.cpu:
        pytest.skip("vLLM's CUDA build here: adapters go as LoRA requests")
    with pytest.raises(InputError, match=r"cannot be scored with vLLM's CPU build: .*punica_cpu.py:349"):
        eval_stage.run([str(adapter)], tmp_path / "out", eval_stage.Config(backend="vllm"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_quality_annotate_on_vllm_gives_the_embedded_engines_replies_and_scores(tiny_tokenizer_dir, tmp_path):
    """`quality annotate --backend vllm` starts vLLM's server for the run and sends it the token ids the embedded
    engine gets: the same greedy replies, and the same forced scores (a one-token completion restricted to the
    digits against the engine's forward pass; a random model never writes a score of its own)."""
    from llmforge.artifacts import Artifact
    from llmforge.data.documents import iter_documents

    model = tiny_model_artifact(tmp_path / "model", tiny_tokenizer_dir, max_position_embeddings=2048)
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in sentences(6, seed=3)])
    found = {}
    for backend in ("embedded", "vllm"):
        out = tmp_path / backend
        llmforge("quality", "annotate", raw, "--model", model, "-o", out, "--max-tokens", 8, "--batch-size", 4,
                 "--backend", backend, env=VLLM_ENV)  # fmt: skip
        artifact = Artifact.open(out)
        records = list(iter_documents(artifact))
        found[backend] = [(r["text"], r["metadata"]["edu_score"], r["metadata"]["edu_score_from"],
                           r["metadata"]["edu_reply"].replace("\ufffd", "")) for r in records]  # fmt: skip
        assert artifact.stats["documents"] == 6 and artifact.stats["completion_tokens"] <= 6 * 8
    assert Artifact.open(tmp_path / "vllm").stats["backend"].startswith("vLLM")
    assert found["vllm"] == found["embedded"]
    assert {score for _, score, _, _ in found["vllm"]} <= set(range(6)) and any(r for *_, r in found["vllm"])


def test_quality_annotate_auto_stays_in_this_environment_and_names_vllms(tmp_path, monkeypatch, capsys):
    """auto does not switch to .venv-vllm behind the user's back (as serve), but says --backend vllm would."""
    from llmforge.stages.quality import _annotate_backend

    monkeypatch.delenv(vllm_backend.PYTHON_ENV, raising=False)
    # a .venv-vllm in the working directory
    (tmp_path / ".venv-vllm").symlink_to(Path(FOUND.python).parent.parent)
    monkeypatch.chdir(tmp_path)
    if vllm_backend.unavailable_reason() is None:
        pytest.skip("vLLM is importable in this environment: auto picks it")
    assert _annotate_backend("auto") == "embedded"
    assert "--backend vllm would run it from" in " ".join(capsys.readouterr().err.split())
