"""Rewards that read the text alone: exact match, the thinking/answer format, JSON against a schema."""

from __future__ import annotations

import json
import re
from typing import Any

from llmforge.rewards.answers import ANSWER_TAG, completion_text, final_answer

STRICT_FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
FORMAT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
JSON_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def _squash(text: str) -> str:
    return " ".join(text.split())


def exact_reward(completions, answer, **_) -> list[float]:
    """1.0 when the final answer (or, without one, the whole completion) equals `answer`, whitespace aside."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        text = completion_text(completion)
        predicted = final_answer(text)
        candidate = predicted if predicted is not None else text
        rewards.append(float(_squash(candidate) == _squash(str(reference))))
    return rewards


def format_score(text: str) -> float:
    """1.0 for `<think>...</think>` then `<answer>...</answer>` and nothing else; otherwise 0.2 per tag that
    appears exactly once (at most 0.8), so a policy far from the format still gets a gradient towards it."""
    once = sum(text.count(tag) == 1 for tag in FORMAT_TAGS)
    if once == len(FORMAT_TAGS) and STRICT_FORMAT.match(text):
        return 1.0
    return 0.2 * once


def format_reward(completions, **_) -> list[float]:
    """Thinking then answer tags: 1.0 when exact, partial credit per tag present once."""
    return [format_score(completion_text(c)) for c in completions]


def _json_payload(text: str) -> str:
    fenced = JSON_FENCE.findall(text)
    if fenced:
        return fenced[-1]
    tagged = ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1]
    return text


def json_score(text: str, schema: Any) -> float:
    """1.0 for JSON that validates against `schema`, 0.5 for JSON that does not, 0.0 for no JSON at all."""
    import jsonschema

    try:
        value = json.loads(_json_payload(text))
    except (json.JSONDecodeError, ValueError):
        return 0.0
    if schema in (None, ""):
        return 1.0
    if isinstance(schema, str):
        schema = json.loads(schema)
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return 0.5
    return 1.0


def json_reward(completions, schema=None, **_) -> list[float]:
    """JSON validity against each record's `schema` (a JSON Schema object or its JSON text; none = any JSON)."""
    schemas = schema if schema is not None else [None] * len(completions)
    return [json_score(completion_text(c), s) for c, s in zip(completions, schemas, strict=True)]
