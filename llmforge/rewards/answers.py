"""Reading what a completion answers: final answers in \\boxed{}, after ####, in <answer> tags, code in fences."""

from __future__ import annotations

import re
from typing import Any

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
CODE_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def completion_text(completion: Any) -> str:
    """TRL hands rewards either a string or a list of chat messages (the assistant's turn)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    return str(completion)


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index].strip()
    return None


def final_answer(text: str) -> str | None:
    """The answer a completion commits to: \\boxed{} first, then after `####` (GSM8K), then <answer> tags."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else ""
    tagged = ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    return None


def extract_code(text: str) -> str:
    """The program in a completion: the last fenced block, else the <answer> content, else the text itself."""
    fenced = CODE_FENCE.findall(text)
    if fenced:
        return fenced[-1]
    tagged = ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1]
    return THINK_BLOCK.sub("", text)
