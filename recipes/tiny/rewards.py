"""A dense reward for the tiny recipe's GRPO: partial credit for a sum that is close.

`exact` gives 0 or 1, and a small model that is wrong on most samples of a prompt gets no gradient from that group
at all (every reply scores the same). Credit falling off with the distance to the sum tells better wrong answers
from worse ones. Used as `--reward recipes/tiny/rewards.py:closeness` (TRL's reward signature).
"""

from __future__ import annotations

import re

from llmforge.rewards.answers import completion_text

NUMBER = re.compile(r"-?\d+")


def closeness(completions, answer, **_) -> list[float]:
    """1 for the sum, 0.5 one off, 0.25 two off, ... 0 for a reply without a number."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        found = NUMBER.findall(completion_text(completion))
        rewards.append(0.5 ** abs(int(found[-1]) - int(reference)) if found else 0.0)
    return rewards
