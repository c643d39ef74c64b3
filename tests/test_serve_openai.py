"""The OpenAI surface beyond plain chat, against a real `llmforge serve` with the official client: n, logprobs,
echo (lm-eval's local-completions scores through it), tools and tool_choice, response_format, and refusals."""

import json

import httpx
import pytest
from test_serve import start_server

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}  # fmt: skip
CLOCK, PI = ({"type": "function", "function": {
    "name": name, "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}
    for name in ("now", "pi"))  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    served = start_server(tiny_model, log_dir=tmp_path_factory.mktemp("serve-openai"))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The served model and tokenizer, loaded here to compute what the server should report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def log_softmax(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_n_choices_in_chat_and_completions_streamed_or_not(client):
    settings = {"model": "tiny", "messages": CHAT, "max_tokens": 8, "temperature": 1.0, "seed": 5,
                "extra_body": {"ignore_eos": True}}  # fmt: skip
    three = client.chat.completions.create(**settings, n=3)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert (
        client.chat.completions.create(**settings).choices[0].message.content == texts[0]
    )  # seed, seed+1, ...
    assert three.usage.completion_tokens == 24
    assert three.usage.prompt_tokens == client.chat.completions.create(**settings).usage.prompt_tokens
    streamed = {0: "", 1: "", 2: ""}
    finishes = {}
    for chunk in client.chat.completions.create(**settings, n=3, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert list(streamed.values()) == texts and finishes == {0: "length", 1: "length", 2: "length"}

    many = client.completions.create(model="tiny", prompt=["the model", "a corpus of"], n=2, max_tokens=4,
                                     temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    got = [c.text for c in many.choices]
    assert [c.index for c in many.choices] == [0, 1, 2, 3] and got[0] == got[1] and got[2] == got[3]  # greedy
    streamed = ["", "", "", ""]
    for chunk in client.completions.create(model="tiny", prompt=["the model", "a corpus of"], n=2, max_tokens=4,
                                           temperature=0, stream=True, extra_body={"ignore_eos": True}):  # fmt: skip
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert streamed == got


def test_chat_logprobs_are_the_models_log_softmax(client, reference):
    model, tokenizer = reference
    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
                                            top_logprobs=3, extra_body={"ignore_eos": True})  # fmt: skip
    entries = answer.choices[0].logprobs.content
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generated = tokenizer(answer.choices[0].message.content, add_special_tokens=False)["input_ids"]
    assert [e.token for e in entries] == [tokenizer.decode([t]) for t in generated]
    scores = log_softmax(model, prompt_ids + generated)
    for position, (entry, token) in enumerate(zip(entries, generated, strict=True)):
        row = scores[len(prompt_ids) - 1 + position]
        assert abs(entry.logprob - float(row[token])) < 1e-5
        best = row.topk(3)
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([int(i)]) for i in best.indices]
        assert (
            max(abs(t.logprob - float(v)) for t, v in zip(entry.top_logprobs, best.values, strict=True))
            < 1e-5
        )
        assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest token was chosen
    assert (
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2).choices[0].logprobs is None
    )


def test_completions_echo_scores_the_prompt_tokens(client, reference):
    model, tokenizer = reference
    ids = tokenizer("the model learns from data")["input_ids"]
    answer = client.completions.create(
        model="tiny", prompt=ids, max_tokens=1, temperature=0, logprobs=2, echo=True
    )
    choice = answer.choices[0]
    logprobs = choice.logprobs
    assert choice.text.startswith(tokenizer.decode(ids)) and len(logprobs.tokens) == len(ids) + 1
    assert (
        logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    )  # nothing predicts the first
    scores = log_softmax(model, ids)
    for position in range(1, len(ids)):
        assert abs(logprobs.token_logprobs[position] - float(scores[position - 1, ids[position]])) < 1e-5
    last = scores[-1]
    assert abs(logprobs.token_logprobs[-1] - float(last.max())) < 1e-5  # greedy: the likeliest next token
    assert max(logprobs.top_logprobs[-1].values()) == logprobs.token_logprobs[-1]
    assert logprobs.text_offset[:2] == [0, len(logprobs.tokens[0])]


def test_lm_eval_local_completions_scores_like_the_hf_backend(server, tiny_model):
    """lm-eval's OpenAI-compatible model scores a log-likelihood task against the server (prompt token ids,
    echo, logprobs): the same accuracy as lm-eval's hf backend on the same model, and the same log-likelihoods."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from llmforge.evaluation.tasks import TASKS_DIR

    def evaluate(model, arguments):
        tasks = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
        return simple_evaluate(model=model, model_args=arguments, tasks=["llmforge_arith_mc"], task_manager=tasks,
                               limit=8, log_samples=True, batch_size=1)  # fmt: skip

    hf = evaluate("hf", {"pretrained": str(tiny_model), "device": "cpu", "max_length": 512})
    api = evaluate("local-completions", {"model": "tiny", "base_url": f"{server.url}/completions",
                                         "tokenizer": str(tiny_model), "tokenizer_backend": "huggingface",
                                         "max_length": 512, "max_retries": 1, "num_concurrent": 1})  # fmt: skip
    for metric in ("acc,none", "acc_norm,none"):
        assert api["results"]["llmforge_arith_mc"][metric] == hf["results"]["llmforge_arith_mc"][metric]
    hf_scores = [r[0] for s in hf["samples"]["llmforge_arith_mc"] for r in s["filtered_resps"]]
    api_scores = [r[0] for s in api["samples"]["llmforge_arith_mc"] for r in s["filtered_resps"]]
    assert len(api_scores) == len(hf_scores) == 32
    assert max(abs(float(a) - float(b)) for a, b in zip(api_scores, hf_scores, strict=True)) < 1e-4


def test_tools_are_rendered_through_the_chat_template(client):
    plain = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
    with_tools = client.chat.completions.create(model="tiny", messages=CHAT, tools=[WEATHER], max_tokens=1)
    refused = client.chat.completions.create(model="tiny", messages=CHAT, tools=[WEATHER], tool_choice="none",
                                             max_tokens=1)  # fmt: skip
    assert (
        with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    )  # the tool's schema is in the prompt
    assert refused.usage.prompt_tokens == plain.usage.prompt_tokens
    # a conversation that went through a call and its result renders too
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    history = CHAT + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]  # fmt: skip
    answer = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER], max_tokens=1)
    assert answer.usage.prompt_tokens > with_tools.usage.prompt_tokens


def test_forced_tool_calls_are_parsed_whole_and_streamed(client):
    settings = {"model": "tiny", "messages": CHAT, "tools": [WEATHER], "max_tokens": 80, "seed": 1,
                "temperature": 1.0}  # fmt: skip
    named = client.chat.completions.create(
        **settings, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    choice = named.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and call.id.startswith("call_") and call.type == "function"
    assert arguments["city"] in ("Paris", "Rome") and isinstance(arguments["days"], int)

    chunks = list(client.chat.completions.create(**settings, stream=True,
                                                 tool_choice={"type": "function", "function": {"name": "get_weather"}}))  # fmt: skip
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].tool_calls[0].function.name == "get_weather" and deltas[0].tool_calls[0].id
    streamed = "".join(d.tool_calls[0].function.arguments or "" for d in deltas)
    assert json.loads(streamed) == arguments  # the same seed: the same call
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    settings["tools"] = [CLOCK, PI]
    required = client.chat.completions.create(**settings, tool_choice="required", parallel_tool_calls=False)
    calls = required.choices[0].message.tool_calls
    assert required.choices[0].finish_reason == "tool_calls"
    assert len(calls) == 1 and calls[0].function.name in ("now", "pi") and calls[0].function.arguments == "{}"
    chunks = list(client.chat.completions.create(**settings, tool_choice="required", parallel_tool_calls=False,
                                                 stream=True))  # fmt: skip
    deltas = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in deltas if d.function.name] == [calls[0].function.name]  # the same seed
    assert "".join(d.function.arguments or "" for d in deltas) == "{}" and {d.index for d in deltas} == {0}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_response_format_constrains_the_answer(client, server):
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99}, "unit": {"enum": ["C", "F"]}},
              "required": ["answer", "unit"], "additionalProperties": False}  # fmt: skip
    for seed in (1, 2):
        answer = client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=60, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
        )  # fmt: skip
        data = json.loads(answer.choices[0].message.content)
        assert answer.choices[0].finish_reason == "stop"
        assert set(data) == {"answer", "unit"} and isinstance(data["answer"], int) and data["unit"] in "CF"
    free = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=40, temperature=0,
                                          response_format={"type": "json_object"})  # fmt: skip
    if free.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(free.choices[0].message.content), dict)
    else:  # a random model may fill the object until max_tokens: what it wrote is still a JSON object's start
        assert free.choices[0].message.content.startswith("{")
    bad = httpx.post(f"{server.url}/chat/completions", json={
        "model": "tiny", "messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "wizard"}}}}}})  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"


def test_bad_requests_are_refused_with_a_clear_400_or_413(server):
    chat, completions = f"{server.url}/chat/completions", f"{server.url}/completions"
    good = {"model": "tiny", "messages": CHAT, "max_tokens": 2}
    cases = [
        (completions, {"model": "tiny", "prompt": ""}, 400, "prompt"),
        (completions, {"model": "tiny", "prompt": []}, 400, "prompt"),
        (completions, {"model": "tiny", "prompt": [[1, 2], []]}, 400, "prompt"),
        (completions, {"model": "tiny", "prompt": [1, 99999]}, 400, "prompt"),
        (chat, {**good, "seed": 2**64}, 400, "seed"),
        (chat, {**good, "seed": -(2**63) - 1}, 400, "seed"),
        (chat, {**good, "n": 65}, 400, "n"),
        (chat, {**good, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
        (chat, {**good, "top_logprobs": 2}, 400, "top_logprobs"),
        (chat, {**good, "tool_choice": "required"}, 400, "tool_choice"),
        (chat, {**good, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         400, "tool_choice"),
        (chat, {**good, "response_format": {"type": "yaml"}}, 400, "response_format"),
        (chat, {**good, "tools": [WEATHER], "response_format": {"type": "json_object"}}, 400, "response_format"),
    ]  # fmt: skip
    for url, body, status, param in cases:
        response = httpx.post(url, json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    huge = httpx.post(chat, content=b'{"model": "tiny", "messages": [' + b" " * (9 * 2**20) + b"]}",
                      headers={"content-type": "application/json"})  # fmt: skip
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    # under the body cap but longer than the context can hold whatever its tokens: refused before tokenizing
    for url, body, param in ((chat, {**good, "messages": [{"role": "user", "content": "ab " * 2_000_000}]}, "messages"),
                             (completions, {"model": "tiny", "prompt": "ab " * 2_000_000}, "prompt")):  # fmt: skip
        long = httpx.post(url, json=body)
        assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded", (
            long.text
        )
        assert (
            long.json()["error"]["param"] == param
            and "6,000,000 characters" in long.json()["error"]["message"]
        )
    assert httpx.post(chat, json=good).status_code == 200  # still serving
