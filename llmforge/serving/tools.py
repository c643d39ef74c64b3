"""Tool calls: which format a model's chat template teaches, reading calls back from its answers (whole or as a
stream), and the grammar that forces a call when `tool_choice` asks for one.

The formats (named as vLLM's tool parsers, `--tool-call-parser`):
- hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number, after optional text. llmforge's
  own tokenizer and Qwen2.5/Qwen3 use it.
- llama3_json: the answer is a JSON object `{"name": ..., "parameters": {...}}` (several joined by `;`), optionally
  after `<|python_tag|>`.
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (or the newer `[TOOL_CALLS]name[ARGS]{...}`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKERS = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]", "llama3_json": "<|python_tag|>"}
HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def template_format(template: str | None) -> str | None:
    """The tool-call format a chat template teaches; None when it renders no tools."""
    template = template or ""
    if "tools" not in template:
        return None
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or "ipython" in template:
        return "llama3_json"
    return None


def directory_format(model_dir: str | Path) -> str | None:
    """The tool-call format of the chat template saved in a model directory (chat_template.jinja, or the
    template in tokenizer_config.json), without loading the tokenizer."""
    directory = Path(model_dir)
    texts = []
    if (directory / "chat_template.jinja").is_file():
        texts.append((directory / "chat_template.jinja").read_text())
    config = directory / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name", "template"}]
            texts += [t.get("template", "") for t in template if isinstance(t, dict)]
        elif isinstance(template, str):
            texts.append(template)
    return next((fmt for fmt in map(template_format, texts) if fmt), None)


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates expect them: a call's arguments as an object, not JSON text."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_template_call(call) for call in calls]}
        out.append(message)
    return out


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except json.JSONDecodeError:
            pass
    return {**call, "function": function}


def _call(data: Any) -> ToolCall | None:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    return ToolCall(data["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))


def _json_values(text: str, separator: str = "") -> list[Any] | None:
    """The JSON values `text` is made of (separated by whitespace or `separator`); None if it is anything else."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and (text[at].isspace() or (separator and text[at] == separator)):
            at += 1
        if at == len(text):
            return values
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return None
        values.append(value)


def parse_calls(fmt: str, text: str) -> list[ToolCall] | None:
    """The calls in `text`, the part of an answer from its first tool-call marker on; None if it does not parse
    (it is then plain content, as vLLM's parsers do)."""
    if fmt == "hermes":
        calls = [_call(values[0]) if (values := _json_values(b)) and len(values) == 1 else None
                 for b in HERMES_CALL.findall(text)]  # fmt: skip
    elif fmt == "mistral":
        body = text.removeprefix(MARKERS["mistral"]).strip()
        if "[ARGS]" in body:  # name[ARGS]{...}[TOOL_CALLS]name[ARGS]{...}
            calls = []
            for part in body.split(MARKERS["mistral"]):
                name, _, arguments = part.partition("[ARGS]")
                values = _json_values(arguments)
                calls.append(
                    ToolCall(name.strip(), json.dumps(values[0])) if values and len(values) == 1 else None
                )
        else:
            values = _json_values(body)
            items = values[0] if values and len(values) == 1 and isinstance(values[0], list) else values
            calls = [_call(item) for item in items or [None]]
    else:
        values = _json_values(text.removeprefix(MARKERS["llama3_json"]), separator=";")
        calls = [_call(value) for value in values or [None]]
    return calls if calls and all(calls) else None


class ToolStream:
    """Splits an answer, delta by delta, into content and tool calls. Content before the first marker streams
    as it comes (holding back what may be the start of one); hermes calls come out as each one closes; the other
    formats' at the end. What turns out not to parse is content after all."""

    def __init__(self, fmt: str):
        self.fmt, self.text, self.sent, self.start = fmt, "", 0, -1
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self.text += delta
        if self.start < 0:
            self.start = self._marker()
            if self.start < 0:
                end = len(self.text) - self._held()
                content, self.sent = self.text[self.sent : end], max(self.sent, end)
                return content, []
            content, self.sent = self.text[self.sent : self.start], self.start
            return content, self._closed()
        return "", self._closed()

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self.start < 0:
            content, self.sent = self.text[self.sent :], len(self.text)
            return content, []
        calls = parse_calls(self.fmt, self.text[self.start :])
        if calls is None:
            if self.calls:  # calls already sent: what trails them is dropped
                return "", []
            return self.text[self.start :], []
        new = calls[len(self.calls) :]
        self.calls += new
        return "", new

    def _marker(self) -> int:
        if self.fmt == "llama3_json":  # the answer itself is the call
            stripped = self.text.lstrip()
            if stripped.startswith("{") or stripped.startswith(MARKERS["llama3_json"]):
                return len(self.text) - len(stripped)
            return -1
        return self.text.find(MARKERS[self.fmt])

    def _held(self) -> int:
        """Characters at the end that may begin a marker."""
        if self.fmt == "llama3_json":
            return len(self.text) if not self.text.strip() or MARKERS["llama3_json"].startswith(
                self.text.lstrip()) else 0  # fmt: skip
        marker = MARKERS[self.fmt]
        return next((k for k in range(min(len(marker) - 1, len(self.text)), 0, -1)
                     if self.text.endswith(marker[:k])), 0)  # fmt: skip

    def _closed(self) -> list[ToolCall]:
        if self.fmt != "hermes":
            return []
        body = self.text[self.start :]
        closed = body.count("</tool_call>")
        if closed <= len(self.calls):
            return []
        calls = parse_calls("hermes", body[: body.rindex("</tool_call>") + len("</tool_call>")])
        if calls is None:
            return []
        new = calls[len(self.calls) :]
        self.calls += new
        return new


def call_grammar(fmt: str, tools: list[dict[str, Any]], choice: Any, marker, parallel: bool = True) -> str:
    """A Lark grammar (llguidance) for `tool_choice` "required" (a call to any tool; more with `parallel`) or a
    named tool (one call to it). `marker(text)` writes a marker as the grammar must match it (a special token or text)."""
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        tools = [t for t in tools if t["function"]["name"] == name]
    alternatives = []
    for tool in tools:
        function = tool["function"]
        key = "parameters" if fmt == "llama3_json" else "arguments"
        alternatives.append({"type": "object", "properties": {
            "name": {"const": function["name"]},
            key: function.get("parameters") or {"type": "object"},
        }, "required": ["name", key], "additionalProperties": False})  # fmt: skip
    from llmforge.serving.grammar import JSON_OPTIONS

    schema = {"anyOf": alternatives} if len(alternatives) > 1 else alternatives[0]
    schema = json.dumps({**schema, "x-guidance": JSON_OPTIONS})
    many = "+" if choice == "required" and parallel else ""
    if fmt == "hermes":
        return f"start: call{many}\ncall: {marker('<tool_call>')} body {marker('</tool_call>')}\nbody: %json {schema}"
    if fmt == "mistral":
        more = ' ("," call)*' if many else ""
        return f'start: {marker("[TOOL_CALLS]")} "[" call{more} "]"\ncall: %json {schema}'
    return f"start: %json {schema}"
