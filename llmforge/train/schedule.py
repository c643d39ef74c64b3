"""Learning-rate schedules as multipliers of the peak rate, one value per optimizer step.

- cosine: linear warmup, then cosine decay to `min_ratio` x peak at the last step (GPT-3, Llama).
- wsd: warmup-stable-decay: linear warmup, constant peak, then a linear decay to `min_ratio` x peak over the last
  `decay_fraction` of the steps (MiniCPM, Hu et al. 2024). The stable phase does not depend on the run's length,
  so a run can be extended from a checkpoint taken before the decay.
- constant: linear warmup, then the peak rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "wsd", "constant")


@dataclass(frozen=True)
class Schedule:
    kind: str
    total_steps: int
    warmup_steps: int
    min_ratio: float = 0.1
    decay_fraction: float = 0.2

    def __call__(self, step: int) -> float:
        """Multiplier for the update made at optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = max(self.total_steps - 1 - self.warmup_steps, 1)
            progress = min((step - self.warmup_steps) / span, 1.0)
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "wsd":
            decay_steps = max(round(self.decay_fraction * self.total_steps), 1)
            decay_start = self.total_steps - decay_steps
            if step < decay_start:
                return 1.0
            progress = min((step - decay_start + 1) / decay_steps, 1.0)
            return 1.0 - (1 - self.min_ratio) * progress
        raise ValueError(f"unknown schedule {self.kind!r} (one of {', '.join(SCHEDULES)})")
