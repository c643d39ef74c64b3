"""`llmforge serve` for real: a subprocess on a free loopback port, talked to with the official openai client."""

import json
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import llmforge, random_adapter_artifact

# the tests share one server per worker (module fixture); the SIGTERM test stops a server of its own
pytestmark = pytest.mark.slow

KEY = "sk-test-key"
CHAT = [{"role": "user", "content": "What is 2 + 3?"}]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def stats(self) -> dict:
        return httpx.get(f"{self.root}/stats", headers={"Authorization": f"Bearer {KEY}"}).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def start_server(model, *args, log_dir: Path) -> Server:
    """`llmforge serve MODEL --port 0 ...`; its first stdout line is the URL, printed once it listens."""
    log = log_dir / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "llmforge", "serve", str(model), "--port", "0", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)  # fmt: skip
    ready, _, _ = select.select([process.stdout], [], [], 180)
    url = process.stdout.readline().strip() if ready else ""
    if not url.startswith("http://127.0.0.1:"):
        process.kill()
        raise AssertionError(f"the server did not start: {url!r}\n{log.read_text()[-3000:]}")
    return Server(process, url, log)


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters with random weights on the tiny model."""
    root = tmp_path_factory.mktemp("adapters")
    return {name: random_adapter_artifact(root / name, tiny_model, seed=seed, rank=rank)
            for name, seed, rank in (("first", 1, 4), ("second", 2, 16))}  # fmt: skip


@pytest.fixture(scope="module")
def server(adapters, tmp_path_factory):
    """One server for the module: the adapter `first` on its base `tiny`, plus `second` on the same base."""
    served = start_server(adapters["first"], "--adapter", f"second={adapters['second']}", "--api-key", KEY,
                          "--max-batch-size", "8", log_dir=tmp_path_factory.mktemp("serve"))  # fmt: skip
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url, api_key=KEY, max_retries=0)


def manifest(artifact) -> dict:
    return json.loads((Path(artifact) / "artifact.json").read_text())


def test_models_health_fingerprint_and_api_key(server, client, tiny_model, adapters):
    from openai import AuthenticationError, OpenAI

    cards = {m.id: m for m in client.models.list().data}
    assert list(cards) == ["first", "tiny", "second"]  # the served adapter, its base, the extra adapter
    for name, path in (("first", adapters["first"]), ("tiny", tiny_model), ("second", adapters["second"])):
        assert cards[name].fingerprint == manifest(path)["fingerprint"] and cards[name].artifact == str(path)
        assert cards[name].owned_by == "llmforge"
        # the context it runs with, as vLLM reports it (none given: the model's own)
        assert (
            cards[name].max_model_len
            == json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
        )
    health = httpx.get(f"{server.root}/health")  # no key needed to check liveness
    assert health.status_code == 200
    assert health.headers["x-llmforge-fingerprint"] == manifest(adapters["first"])["fingerprint"]

    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
    ):
        refused = httpx.get(f"{server.url}/models", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
    for scheme in ("bearer", "BEARER"):  # the scheme is case-insensitive (RFC 9110), the key is not
        assert (
            httpx.get(f"{server.url}/models", headers={"Authorization": f"{scheme} {KEY}"}).status_code == 200
        )
    assert (
        httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {KEY.upper()}x"}).status_code
        == 401
    )
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()


def test_chat_uses_the_artifact_template_and_generation_config(client, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=CHAT,
                                                           extra_body={"ignore_eos": True})  # fmt: skip
    answer = raw.parse()
    assert raw.headers["x-llmforge-fingerprint"] == manifest(tiny_model)["fingerprint"]
    assert answer.system_fingerprint == manifest(tiny_model)["fingerprint"]
    assert answer.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # no max_tokens: the generation config's max_new_tokens (256) applies
    assert answer.usage.completion_tokens == 256 and answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content


def test_streaming_gives_the_same_answer_as_a_plain_request(client):
    settings = {"model": "tiny", "messages": CHAT, "max_tokens": 16, "seed": 3, "temperature": 1.0}
    plain = client.chat.completions.create(**settings)
    chunks = list(
        client.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_completions_single_list_and_streaming(client):
    one = client.completions.create(model="tiny", prompt="the model learns", max_tokens=6, temperature=0,
                                    extra_body={"ignore_eos": True})  # fmt: skip
    assert one.object == "text_completion" and one.usage.completion_tokens == 6
    many = client.completions.create(model="tiny", prompt=["a corpus of", "the model learns"], max_tokens=6,
                                     temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    assert [c.index for c in many.choices] == [0, 1] and many.usage.completion_tokens == 12
    assert many.choices[1].text == one.choices[0].text  # greedy: the same prompt gives the same text
    streamed = client.completions.create(model="tiny", prompt="the model learns", max_tokens=6, temperature=0,
                                         stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == one.choices[0].text


def test_seed_max_tokens_and_stop_sequences(client):
    def ask(**extra):
        settings = {"model": "tiny", "messages": CHAT, "temperature": 1.0, "top_p": 0.95, "max_tokens": 24,
                    "extra_body": {"ignore_eos": True}}  # fmt: skip
        return client.chat.completions.create(**{**settings, **extra})

    first, again, other = ask(seed=11), ask(seed=11), ask(seed=12)
    text = first.choices[0].message.content
    assert again.choices[0].message.content == text and other.choices[0].message.content != text
    assert first.usage.completion_tokens == 24 and first.choices[0].finish_reason == "length"
    short = ask(seed=11, max_tokens=5)
    assert short.usage.completion_tokens == 5 and text.startswith(short.choices[0].message.content)

    at = next(i for i in range(3, len(text) - 2) if text[i : i + 2].isascii() and text[i : i + 2].strip())
    stop = text[at : at + 2]
    expected = text[: text.index(stop)]
    stopped = ask(seed=11, stop=["\x00not there", stop])
    assert stopped.choices[0].message.content == expected and stopped.choices[0].finish_reason == "stop"
    chunks = ask(seed=11, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


def test_vllms_sampling_parameters_are_honoured(client):
    """top_k 1 (and min_p 1) leave only the likeliest token, so a seeded sample at temperature 1 is the greedy
    answer; -1 means no top_k, as in vLLM (the penalties' effect: test_serving_engine)."""

    def ask(**extra):
        return client.completions.create(model="tiny", prompt="the model learns", max_tokens=24, seed=3,
                                         extra_body={"ignore_eos": True, **extra}).choices[0].text  # fmt: skip

    greedy = ask(temperature=0)
    assert ask(temperature=1.0, top_k=1) == greedy and ask(temperature=1.0, min_p=1.0) == greedy
    assert ask(temperature=1.0, top_k=-1) == ask(temperature=1.0) != greedy


def test_concurrent_requests_are_answered_correctly_and_batched(server, client):
    prompts = [f"question {i}: what is {i} + {i}?" for i in range(8)]

    def ask(prompt):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                              max_tokens=24, temperature=0, extra_body={"ignore_eos": True})  # fmt: skip

    alone = [ask(p).choices[0].message.content for p in prompts[:2]]
    before = server.stats()
    answers = [None] * len(prompts)

    def worker(index):
        answers[index] = ask(prompts[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    after = server.stats()
    assert all(a is not None and a.usage.completion_tokens == 24 for a in answers)
    assert [a.choices[0].message.content for a in answers[:2]] == alone  # batching does not change answers
    steps = after["decode_steps"] - before["decode_steps"]
    assert after["completion_tokens"] - before["completion_tokens"] == 8 * 24
    assert after["max_batch_size"] > 1 and steps < 8 * 23  # several sequences per forward pass
    assert "running" in server.log.read_text() and "batch:" in server.log.read_text()


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    chat = f"{server.url}/chat/completions"
    good = {"model": "tiny", "messages": CHAT, "max_tokens": 2}
    cases = [
        (b"{not json", 400, "invalid_json", None),
        ({**good, "model": "nope"}, 404, "model_not_found", "model"),
        ({**good, "max_tokens": -1}, 400, "invalid_value", "max_tokens"),
        ({**good, "messages": [{"role": "user", "content": "word " * 600}]}, 400, "context_length_exceeded", "messages"),
        ({**good, "max_tokens": 600}, 400, "context_length_exceeded", "max_tokens"),
        ({**good, "presence_penalty": 2.5}, 400, "invalid_value", "presence_penalty"),  # OpenAI's range: -2 to 2
        ({**good, "logit_bias": {"5": 1.0}}, 400, "unsupported_parameter", "logit_bias"),
        ({**good, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_value", "messages.0.role"),
        ({"model": "tiny", "prompt": "hi", "best_of": 2}, 400, "unsupported_parameter", "best_of"),
        ({**good, "top_k": -2}, 400, "invalid_value", "top_k"),
        ({"model": "tiny", "prompt": "hi", "repetition_penalty": 0}, 400, "invalid_value", "repetition_penalty"),
        ({**good, "length_penalty": 2.0}, 400, "unsupported_parameter", "length_penalty"),  # beam search's
    ]  # fmt: skip
    for body, status, code, param in cases:
        url = f"{server.url}/completions" if isinstance(body, dict) and "prompt" in body else chat
        sent = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = httpx.post(url, headers={**headers, "content-type": "application/json"}, **sent)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert httpx.post(chat, headers=headers, json=good).status_code == 200
    neutral = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "length_penalty": 1, "unknown_field": 3}
    assert httpx.post(chat, headers=headers, json={**good, **neutral}).status_code == 200


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(server, stream):
    before = server.stats()
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 480, "stream": stream, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    if stream:
        with httpx.stream("POST", f"{server.url}/chat/completions", json=body, headers=headers) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data:")  # the role chunk
            # the first tokens arrived: it is running
            assert next(line for line in lines if line.startswith("data:"))
    else:  # the client gives up waiting for the whole answer and closes the connection
        with pytest.raises(httpx.ReadTimeout):
            timeout = httpx.Timeout(10, read=1)
            httpx.post(f"{server.url}/chat/completions", json=body, headers=headers, timeout=timeout)
    deadline = time.time() + 30
    while (stats := server.stats())["cancelled"] == before["cancelled"] and time.time() < deadline:
        time.sleep(0.05)
    assert stats["cancelled"] == before["cancelled"] + 1
    assert stats["cancelled_at_tokens"][-1] < 480 and stats["running"] == 0


def test_chat_repl_against_the_server(server):
    result = subprocess.run([sys.executable, "-m", "llmforge", "chat", "--url", server.url, "--max-tokens", "5",
                             "--seed", "1", "--temperature", "0"], input="hello\n/reset\nhello\n/exit\nnever sent\n",
                            capture_output=True, text=True, timeout=120, env={"LLMFORGE_API_KEY": KEY,
                                                                                "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == second and first  # /reset forgot the first exchange: the same prompt, the same answer
    assert "conversation reset" in result.stderr


def test_chat_repl_on_an_artifact_in_process(tiny_model):
    run = subprocess.run([sys.executable, "-m", "llmforge", "chat", str(tiny_model), "--max-tokens", "5",
                          "--temperature", "0"], input="hi there\n/reset\nhi there\n", capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()
    assert first == second and first
    neither = llmforge("chat", check=False)
    assert neither.returncode == 2 and "needs a model artifact or --url" in neither.stderr


def greedy_answers(models: dict[str, Path], prompt: str) -> dict[str, str]:
    """Each model's (or adapter's) 8 greedy tokens after `prompt` in transformers, by name."""
    import torch

    from llmforge.model.loading import load_model, load_tokenizer, resolve_model

    answers = {}
    for name, path in models.items():
        source = resolve_model(path, "serve")
        tokenizer = load_tokenizer(source)
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        out = load_model(source).generate(
            ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        answers[name] = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return answers


def test_adapters_are_served_by_name_in_one_mixed_batch(server, client, tiny_model, adapters):
    prompt = "the model learns from"
    expected = greedy_answers(
        {"first": adapters["first"], "tiny": tiny_model, "second": adapters["second"]}, prompt
    )
    assert len(set(expected.values())) == 3  # each adapter changes the answer
    answers = {}

    def ask(name):
        answers[name] = client.completions.with_raw_response.create(
            model=name, prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})  # fmt: skip

    threads = [threading.Thread(target=ask, args=(name,)) for name in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert {name: a.parse().choices[0].text for name, a in answers.items()} == expected
    assert answers["second"].headers["x-llmforge-fingerprint"] == manifest(adapters["second"])["fingerprint"]
    assert answers["tiny"].headers["x-llmforge-fingerprint"] == manifest(tiny_model)["fingerprint"]


def test_adapters_of_a_mixture_of_experts_are_served_one_at_a_time(tiny_tokenizer_dir, tmp_path):
    """peft adapts a mixture of experts' expert tensors through a wrapper that cannot mix adapters in one batch:
    the engine then runs one adapter (or the base) at a time, and every answer is still its own model's."""
    from openai import OpenAI

    from llmforge.data.tokenizer import load_tokenizer
    from llmforge.model.llama import build_config, build_model, special_ids_of
    from llmforge.model.loading import save_model_payload

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    config = build_config("tiny", len(tokenizer), special_ids_of(tokenizer), arch="qwen3", num_experts=4,
                          max_position_embeddings=256)  # fmt: skip
    base = tmp_path / "moe"
    save_model_payload(build_model(config, seed=3), tokenizer, base)
    adapters = {name: random_adapter_artifact(tmp_path / name, base, seed=seed) for name, seed in
                (("first", 1), ("second", 2))}  # fmt: skip
    prompt = "the model learns from"
    expected = greedy_answers({"first": adapters["first"], "moe": base, "second": adapters["second"]}, prompt)
    assert len(set(expected.values())) == 3  # each adapter changes the answer

    server = start_server(adapters["first"], "--adapter", f"second={adapters['second']}", log_dir=tmp_path)
    try:
        client = OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        answers = {}

        def ask(name):
            answers[name] = client.completions.create(model=name, prompt=prompt, max_tokens=8, temperature=0,
                                                      extra_body={"ignore_eos": True}).choices[0].text  # fmt: skip

        threads = [threading.Thread(target=ask, args=(name,)) for name in [*expected, *expected]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert answers == expected
    finally:
        server.stop()


def test_sigterm_lets_requests_in_flight_finish_then_exits(tiny_model, tmp_path):
    from openai import OpenAI

    # a server of its own: the shared one may be serving other tests on this worker
    server = start_server(tiny_model, log_dir=tmp_path)
    client = OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    answer = {}

    def long_request():
        answer["value"] = client.completions.create(model="tiny", prompt="the model", max_tokens=300,
                                                    extra_body={"ignore_eos": True})  # fmt: skip

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.time() + 60
    while httpx.get(f"{server.root}/stats").json()["running"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert server.process.wait(timeout=60) == 0
    assert answer["value"].usage.completion_tokens == 300  # finished, not cut off
    assert "server stopped (SIGTERM)" in server.log.read_text()


def test_bad_serve_inputs_are_refused_before_loading(tiny_model, adapters, tmp_path):
    from helpers import tiny_model_artifact

    from llmforge.errors import InputError
    from llmforge.stages import serve

    other_base = tiny_model_artifact(tmp_path / "other", Path(tiny_model), seed=5)
    foreign = random_adapter_artifact(tmp_path / "foreign", other_base)
    cases = [
        (tmp_path / "missing", [], "no such model directory"),
        (tiny_model, [f"x={tiny_model}"], "not an adapter"),
        (adapters["first"], [f"foreign={foreign}"], "not on the served base"),
        (tiny_model, [f"tiny={adapters['first']}"], "two served models would be called 'tiny'"),
    ]
    for model, extra, message in cases:
        with pytest.raises(InputError, match=message):
            serve.run(model, serve.Config(adapters=extra, port=0))
    # a bare adapter path with "=" in it, as sweeps name their runs, is a path, not NAME=PATH
    from llmforge.serving.models import parse_adapters

    swept = tmp_path / "lr=1e-4"
    shutil.copytree(adapters["second"], swept)
    assert parse_adapters([str(swept), f"named={swept}"]) == {"lr=1e-4": str(swept), "named": str(swept)}
    # a Python without vLLM named as vLLM's (so a .venv-vllm beside the checkout is not used)
    env = {"LLMFORGE_VLLM_PYTHON": sys.executable}
    result = llmforge(
        "serve", tiny_model, "--backend", "vllm", "--port", "0", check=False, timeout=120, env=env
    )
    assert result.returncode == 2 and result.stdout == ""
    assert f"the vllm backend needs vLLM: {sys.executable} has no vLLM" in " ".join(result.stderr.split())


def test_auto_backend_says_why_it_serves_on_cpu_and_what_it_ignores(capsys):
    from llmforge.serving import vllm_backend
    from llmforge.stages import serve

    reason = vllm_backend.unavailable_reason()
    if reason is None:
        pytest.skip("vLLM and a GPU are here: auto picks vLLM")
    assert serve.choose_backend(serve.Config()) == "embedded"
    err = capsys.readouterr().err
    assert f"backend: the embedded CPU server ({reason})" in err and "warning" not in err
    vllm_only = serve.Config(tensor_parallel_size=2, gpu_memory_utilization=0.5)
    assert serve.choose_backend(vllm_only) == "embedded"
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "--tensor-parallel-size 2, gpu_memory_utilization 0.5: vLLM settings, ignored by the embedded" in err
    )
    assert serve.choose_backend(serve.Config(backend="vllm", tensor_parallel_size=2)) == "vllm"
    assert capsys.readouterr().err == ""


def test_vllm_command_line_passes_the_settings_through(tiny_model, adapters, monkeypatch):
    from llmforge.serving import models, vllm_backend
    from llmforge.stages.serve import Config

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)

    first, second = adapters["first"], adapters["second"]
    plan = models.plan(first, None, {"second": str(second)})
    config = Config(tensor_parallel_size=2, max_model_len=256, api_key="k", port=9000)
    for cpu in (True, False):
        found = vllm_backend.Runtime("/venv/bin/python", "0.32.0", cpu=cpu)
        argv = vllm_backend.command(plan, config, 9000, found)
        assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
        options = " ".join(argv[3:])
        assert f"--model {tiny_model} --served-model-name tiny --host 127.0.0.1 --port 9000" in options
        assert "--tensor-parallel-size 2" in options and "--max-model-len 256" in options
        assert "--dtype float32" in options and "--generation-config auto" in options  # as stored
        assert "--middleware llmforge.serving.vllm_backend.fingerprint_header" in options
        # compact JSON under response_format, as the embedded server writes it
        config_at = argv.index("--structured-outputs-config") + 1
        assert json.loads(argv[config_at]) == {"backend": "xgrammar", "disable_any_whitespace": True}
        # ranks 4 and 16: vLLM takes 1, 8, 16, ... only
        assert options.endswith(f"--enable-lora --max-loras 2 --max-lora-rank 16 --lora-modules first={first} "
                                f"second={second}")  # fmt: skip
        assert ("--enforce-eager" in argv) is cpu and ("--gpu-memory-utilization" in argv) is not cpu
        # a CPU gets a KV cache of 4 GiB unless told (vLLM's own default wants 92% of the memory free)
        assert ("--kv-cache-memory-bytes 4294967296" in options) is cpu
        sized = vllm_backend.command(plan, config.model_copy(update={"kv_cache_gib": 0.5}), 9000, found)
        assert "--kv-cache-memory-bytes 536870912" in " ".join(sized)
        # vLLM's automatic prefix caching stays on, unless told
        uncached = config.model_copy(update={"prefix_caching": False})
        assert "--no-enable-prefix-caching" not in argv
        assert "--no-enable-prefix-caching" in vllm_backend.command(plan, uncached, 9000, found)
        assert "k" not in argv  # the key travels in the environment, out of `ps`
        env = vllm_backend.environment(found, "abc", "k")
        assert env["VLLM_API_KEY"] == "k" and env["LLMFORGE_FINGERPRINT"] == "abc"
        assert env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == ("0" if cpu else None)
        assert env["VLLM_ENFORCE_STRICT_TOOL_CALLING"] == "0"  # forced calls: the JSON-schema path
    monkeypatch.setenv("VLLM_ENFORCE_STRICT_TOOL_CALLING", "1")  # the user's setting stands
    assert vllm_backend.environment(found, "abc", None)["VLLM_ENFORCE_STRICT_TOOL_CALLING"] == "1"


def test_vllm_dtype_follows_the_checkpoint(tiny_model, tmp_path):
    import shutil

    from llmforge.errors import InputError
    from llmforge.serving.vllm_backend import dtype_for

    assert dtype_for(tiny_model, "auto", cpu=True) == "float32"  # vLLM's own auto would pick float16
    assert dtype_for(tiny_model, "bfloat16", cpu=True) == "bfloat16"
    int4 = shutil.copytree(tiny_model, tmp_path / "int4")
    config = json.loads((int4 / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors",
                                     "config_groups": {"group_0": {"weights": {"num_bits": 4}}}}  # fmt: skip
    (int4 / "config.json").write_text(json.dumps(config))
    assert dtype_for(int4, "auto", cpu=True) == "bfloat16"  # vLLM's CPU INT4 kernel has no float32 path
    assert dtype_for(int4, "auto", cpu=False) == "auto"  # a GPU's kernels pick
    with pytest.raises(InputError, match="cpu_gemm_wna16 not implemented for 'Float'"):
        dtype_for(int4, "float32", cpu=True)


def test_middleware_tags_every_response_and_turns_a_crash_into_an_openai_error():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from llmforge.serving.openai_api import AuthAndFingerprint, ServerState

    def crash(request):
        raise RuntimeError("boom")

    def tagged(request):
        return JSONResponse({}, headers={"x-llmforge-fingerprint": "adapter"})

    app = Starlette(routes=[Route("/crash", crash), Route("/tagged", tagged), Route("/health", tagged)])
    state = ServerState(
        engine=None, tokenizer=None, models={}, fingerprint="served", defaults=None, api_key="k"
    )
    app.add_middleware(AuthAndFingerprint, state=state)
    client = TestClient(app, raise_server_exceptions=False)
    key = {"Authorization": "Bearer k"}
    refused = client.get("/tagged")
    assert refused.status_code == 401 and refused.headers["x-llmforge-fingerprint"] == "served"
    assert client.get("/health").status_code == 200  # no key needed
    assert client.get("/tagged", headers=key).headers.get_list("x-llmforge-fingerprint") == ["adapter"]
    crashed = client.get("/crash", headers=key)
    assert crashed.status_code == 500 and crashed.headers["x-llmforge-fingerprint"] == "served"
    assert crashed.json()["error"] == {"message": "RuntimeError: boom", "type": "server_error", "param": None,
                                       "code": None}  # fmt: skip


def test_only_loopback_addresses_count_as_local():
    """serve warns when it binds beyond loopback without an API key."""
    from llmforge.stages.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("no-such-host.invalid")


def test_a_server_on_every_interface_prints_a_local_url_and_names_the_one_for_other_machines():
    """stdout keeps a URL this machine can call (scripts capture it); the ready line adds the host's own name."""
    import socket

    from llmforge.serving.embedded import base_url, where

    assert (
        base_url("0.0.0.0", 8000) == "http://127.0.0.1:8000/v1" and base_url("::", 80) == "http://[::1]:80/v1"
    )
    assert where("127.0.0.1", 8000) == " at http://127.0.0.1:8000/v1"
    assert where("0.0.0.0", 8000) == (" at http://127.0.0.1:8000/v1 (listening on every interface: other machines "
                                      f"use http://{socket.getfqdn()}:8000/v1)")  # fmt: skip
