"""Reading tool calls back from answers in each chat template's format, whole and delta by delta."""

import json

import pytest

from llmforge.data.tokenizer import CHAT_TEMPLATE
from llmforge.serving.tools import ToolStream, parse_calls, template_format, template_messages

ANSWERS = {
    "hermes": ('Let me look. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
               '<tool_call>{"name": "now", "arguments": {}}</tool_call>', "Let me look. "),
    "llama3_json": ('{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "now", "parameters": {}}', ""),
    "mistral": ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "now", '
                '"arguments": {}}]', ""),
}  # fmt: skip
EXPECTED = [("get_weather", {"city": "Paris"}), ("now", {})]


def split(stream: ToolStream, text: str, size: int):
    content, calls = "", []
    for at in range(0, len(text), size):
        more, new = stream.feed(text[at : at + size])
        content, calls = content + more, calls + new
    more, new = stream.finish()
    return content + more, calls + new


@pytest.mark.parametrize("fmt", sorted(ANSWERS))
def test_calls_are_read_back_whole_and_from_any_split_of_the_stream(fmt):
    text, content = ANSWERS[fmt]
    for size in (1, 3, 7, len(text)):
        got_content, calls = split(ToolStream(fmt), text, size)
        assert got_content == content
        assert [(c.name, json.loads(c.arguments)) for c in calls] == EXPECTED
    assert len({c.id for c in split(ToolStream(fmt), text, 1)[1]}) == 2


def test_hermes_calls_stream_as_each_one_closes_and_plain_text_stays_content():
    stream = ToolStream("hermes")
    first = 'Sure<tool_call>{"name": "now", "arguments": {}}</tool_call>'
    assert stream.feed("Sure<tool_")[0] == "Sure"  # the start of a marker is held back
    content, calls = stream.feed(first[len("Sure<tool_") :])
    assert content == "" and [c.name for c in calls] == ["now"]  # out before the answer ends
    assert split(ToolStream("hermes"), "no calls here, only 3 < 4 and <b>", 2) == (
        "no calls here, only 3 < 4 and <b>",
        [],
    )
    broken = "<tool_call>{not json</tool_call>"
    assert split(ToolStream("hermes"), broken, 4) == (broken, [])  # what does not parse is content
    assert split(ToolStream("llama3_json"), "The answer is 4.", 3) == ("The answer is 4.", [])
    assert parse_calls("mistral", '[TOOL_CALLS]now[ARGS]{"tz": "UTC"}')[0].arguments == '{"tz": "UTC"}'


def test_formats_are_recognised_from_the_template_and_arguments_given_to_it_as_objects():
    assert template_format(CHAT_TEMPLATE) == "hermes"
    assert template_format("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert template_format("{% if tools %}[AVAILABLE_TOOLS]{{ tools }}{% endif %}[TOOL_CALLS]") == "mistral"
    assert template_format("{% if tools %}{{ tools }}{% endif %}<|python_tag|>") == "llama3_json"
    call = {"id": "c", "type": "function", "function": {"name": "now", "arguments": '{"tz": "UTC"}'}}
    (message,) = template_messages([{"role": "assistant", "tool_calls": [call]}])
    assert message["tool_calls"][0]["function"]["arguments"] == {"tz": "UTC"}


def test_vllm_is_started_with_the_tool_parser_of_the_template(tiny_model, tmp_path):
    from llmforge.serving import models, vllm_backend
    from llmforge.serving.tools import directory_format
    from llmforge.stages.serve import Config

    assert directory_format(tiny_model) == "hermes"
    argv = vllm_backend.command(models.plan(tiny_model, None, {}), Config(), 8000)
    assert " ".join(argv).count("--enable-auto-tool-choice --tool-call-parser hermes") == 1
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert directory_format(tmp_path) is None
