"""The approximate prefix index's block length in characters: fixed (GIE), or aligned to the pods' KV blocks.

With `characters` (the default) a block is `blockSize` characters, as in GIE. With `tokens` a block is the
pods' KV block (`block_size` tokens from vLLM's `cache_config_info`, or `blockSizeTokens`) times the estimated
characters per token, so an index block stands for about one block the pod can reuse: vLLM only reuses full
blocks, and a 64-character block count says little about a pod whose blocks are 16 or 128 tokens.

One length for the pool: the index keys a block by its hash, and a hash depends on the length, so pods hashed
at different lengths could never be matched against one request's hashes in one pass. The pool's block size
is the one most pods report; a pod that reports another is warned about once and matched at the pool's
(its score is then rougher). Characters per token start at `charsPerToken` and, with `learnCharsPerToken`,
follow the pods' `usage.prompt_tokens`; the length in use only moves when the estimate drifts more than
REALIGN_TOLERANCE from it, because every change of length makes the index's entries unmatchable (they age
out of the LRUs).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

from scorers.chars_per_token import DEFAULT_CHARS_PER_TOKEN, CharsPerToken

BlockAlign = Literal["characters", "tokens"]
DEFAULT_POD_BLOCK_TOKENS = 16  # vLLM's GPU default, until a scrape says otherwise
REALIGN_TOLERANCE = 0.1  # relative drift of the learned characters per token that realigns the blocks
MIN_SAMPLES = 8  # answers learned from before the first realignment

logger = logging.getLogger(__name__)


class BlockAlignment:
    """Decides the block length; `block_chars` is the one to hash the next fresh request with."""

    def __init__(
        self,
        mode: BlockAlign = "characters",
        block_chars: int = 64,
        *,
        pod_block_tokens: int | None = None,
        default_pod_block_tokens: int = DEFAULT_POD_BLOCK_TOKENS,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        learn_chars_per_token: bool = True,
    ) -> None:
        self.mode: BlockAlign = mode
        self.fixed_tokens = pod_block_tokens  # configured: wins over the scrapes
        self.default_tokens = default_pod_block_tokens
        self.learn = learn_chars_per_token
        self.estimate = CharsPerToken(chars_per_token)
        self.chars_per_token = self.estimate.value  # the value in use (moves with hysteresis)
        self._pod_tokens: dict[str, int] = {}  # pod -> scraped block size
        self._warned: dict[str, int] = {}  # pod -> the mismatching size already warned about
        self.block_tokens = pod_block_tokens or default_pod_block_tokens
        self.block_chars = block_chars if mode == "characters" else self._chars()

    @property
    def aligned(self) -> bool:
        return self.mode == "tokens"

    def _chars(self) -> int:
        return max(1, round(self.block_tokens * self.chars_per_token))

    def on_scrape(self, pod: str, block_size: int | None) -> None:
        """A pod's scrape reported its KV block size (None: not reported)."""
        if not self.aligned or block_size is None or block_size < 1:
            return
        if self._pod_tokens.get(pod) == block_size:
            return
        self._pod_tokens[pod] = block_size
        self._retune()

    def forget(self, pod: str) -> None:
        if self._pod_tokens.pop(pod, None) is not None:
            self._warned.pop(pod, None)
            self._retune()

    def observe_usage(self, chars: int, prompt_tokens: int | None) -> None:
        """An answer's usage: learn characters per token; realign when the estimate drifted far enough."""
        if not (self.aligned and self.learn):
            return
        est = self.estimate
        est.observe(chars, prompt_tokens)
        if est.samples < MIN_SAMPLES:
            return
        if abs(est.value - self.chars_per_token) > REALIGN_TOLERANCE * self.chars_per_token:
            self.chars_per_token = est.value
            self._apply()

    def _retune(self) -> None:
        if self.fixed_tokens is None and self._pod_tokens:
            counts = Counter(self._pod_tokens.values())
            # The most common size; ties go to the smaller block (finer matching).
            self.block_tokens = min(counts, key=lambda size: (-counts[size], size))
        for pod, size in self._pod_tokens.items():
            if size != self.block_tokens and self._warned.get(pod) != size:
                self._warned[pod] = size
                logger.warning(
                    "prefix-cache-scorer: pod %s has KV blocks of %d tokens, the pool's are %d; its prefix "
                    "matches are counted in the pool's blocks (approximate)",
                    pod,
                    size,
                    self.block_tokens,
                )
        self._apply()

    def _apply(self) -> None:
        chars = self._chars()
        if chars != self.block_chars:
            logger.info(
                "prefix-cache-scorer: blocks are now %d characters (%d tokens x %.2f characters per token)",
                chars,
                self.block_tokens,
                self.chars_per_token,
            )
            self.block_chars = chars
