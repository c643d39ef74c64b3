"""Single-digit addition problems: the skill the tiny pipeline learns and the bundled eval tasks measure.

All 100 problems "What is A + B?" (A, B in 0..9) are split once, deterministically: 30 are held out for the
bundled tasks (llmforge/resources/tasks/llmforge/arithmetic.jsonl), the other 70 are for training. A recipe makes
its SFT / GRPO data from `problems("train")` in exactly the format the tasks ask in, and never sees an eval item;
a small model that learns addition (not the 70 answers by heart) scores on the held-out 30.

The order is by SHA-256 of the problem, not by a seeded shuffle, so the split is the same on every Python.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HELD_OUT = 30
CHOICES = 4  # multiple-choice candidates: a window of consecutive sums holding the answer
LARGEST_SUM = 18

Split = Literal["train", "eval"]


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def id(self) -> str:
        return f"add-{self.a}-{self.b}"

    @property
    def question(self) -> str:
        return f"What is {self.a} + {self.b}?"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    def completion(self, reasoning: bool = False) -> str:
        """The assistant's reply: the bare answer, or a short thought and the answer in the tags GRPO's `format`
        and `math` rewards look for (llmforge.rewards)."""
        if reasoning:
            return f"<think>{self.a} plus {self.b} is {self.answer}</think><answer>{self.answer}</answer>"
        return self.answer

    def messages(self, reasoning: bool = False) -> list[dict[str, str]]:
        """One chat exchange, for SFT data rendered with the model's own chat template."""
        return [
            {"role": "user", "content": self.question},
            {"role": "assistant", "content": self.completion(reasoning)},
        ]

    def choices(self) -> list[str]:
        """Four consecutive sums around the answer; where the answer sits among them varies by problem, so a
        model that always prefers the smallest (or largest) candidate scores chance, 1 in 4."""
        position = _digest(self.id + ":choice") % CHOICES
        low = min(max(self.a + self.b - position, 0), LARGEST_SUM - CHOICES + 1)
        return [str(value) for value in range(low, low + CHOICES)]

    def record(self) -> dict:
        """The task data line: what the bundled YAML tasks read."""
        choices = self.choices()
        return {"id": self.id, "question": self.question, "answer": self.answer, "choices": choices,
                "label": choices.index(self.answer)}  # fmt: skip


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def problems(split: Split) -> list[Problem]:
    """The held-out problems of the bundled tasks ("eval", 30) or all the others ("train", 70), in a fixed order."""
    every = sorted((Problem(a, b) for a in range(10) for b in range(10)), key=lambda p: _digest(p.id))
    if split == "eval":
        return every[:HELD_OUT]
    if split == "train":
        return every[HELD_OUT:]
    raise ValueError(f"split must be 'train' or 'eval', not {split!r}")


def write_jsonl(path: Path, split: Split = "eval") -> Path:
    """Write a split as task data lines (the bundled file is `write_jsonl(ARITHMETIC_DATA)`)."""
    lines = [json.dumps(problem.record()) for problem in problems(split)]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
