"""Exponential back-off with full jitter (AWS's "full jitter": uniform in [0, min(cap, base * 2^n)])."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """The wait before the next retry; grows until `max_s`. Never 0, so a dead server is not spun on."""
        ceiling = min(self.max_s, self.initial_s * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return max(self.initial_s / 10, self.rng.uniform(0, ceiling))

    def reset(self) -> None:
        """A success: the next failure starts from `initial_s` again."""
        self._attempt = 0
