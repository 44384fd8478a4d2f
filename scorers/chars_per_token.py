"""A running estimate of prompt characters per token, learned from the pods' `usage.prompt_tokens`.

Used where a scorer must turn characters into tokens without tokenizing: `prefill-load-scorer` (a prompt's
prefill work) and the token-aligned `prefix-cache-scorer` (its block length in characters).
"""

from __future__ import annotations

import math

DEFAULT_CHARS_PER_TOKEN = 4.0  # a usual average for English text with BPE tokenizers
BOUNDS = (0.5, 20.0)
ALPHA = 0.1  # EWMA weight of one response's ratio


class CharsPerToken:
    """A running mean over the first responses (the prior counts as one), then an EWMA with weight ALPHA."""

    __slots__ = ("samples", "value")

    def __init__(self, prior: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.value = min(BOUNDS[1], max(BOUNDS[0], prior))
        self.samples = 0

    def observe(self, chars: int, prompt_tokens: int | None) -> None:
        """Fold one answered request in: its prompt's length in characters and the pod's token count."""
        if not prompt_tokens or prompt_tokens <= 0 or chars <= 0:
            return
        ratio = min(BOUNDS[1], max(BOUNDS[0], chars / prompt_tokens))
        if not math.isfinite(ratio):
            return
        self.samples += 1
        alpha = max(ALPHA, 1.0 / (self.samples + 1))
        self.value += alpha * (ratio - self.value)
