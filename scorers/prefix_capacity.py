"""How much of a pod's KV cache the approximate prefix index may assume, learned from what the pod reports.

`prefix-cache-scorer` sizes each pod's LRU from the pod's KV capacity (autoSizeLRU), but a pod holds less of
the prompts epp sent than that: the answers it generated, partly filled blocks, more tokens per character than
estimated, other clients' prompts. Near capacity a small error is not a small loss: a pod that holds a few
fewer conversations than the index believes, and sees them in turn (multi-round chat), evicts each one just
before it returns. The index then predicts hits the pod misses on every request (LRU's cliff), the load
estimates count a fraction of the real prefill, and requests pile up on that pod.

So each pod's LRU holds its KV capacity times a factor in [MIN_FACTOR, 1], which compares the hit fraction
the index predicted for the prompts sent with the fraction the pod reports cached:

- per answer, from `usage.prompt_tokens_details.cached_tokens` when the pod reports it (vLLM's
  `--enable-prompt-tokens-details`);
- otherwise per scrape window, from the growth of `vllm:prefix_cache_hits_total` over
  `vllm:prefix_cache_queries_total` against the predictions of the requests sent, both summed over the
  recent windows (each older window weighs WINDOW_KEEP as much): the pod counts a request when it schedules
  it, which may be a window after epp sent it, so one window alone can compare a cold request the pod
  counted with a warm one it has not (half the prediction "missed").

A prediction above the pod's fraction by more than TOLERANCE shrinks the factor by exp(-GAIN x error), one
below grows it by exp(GAIN x error) (a window counts as up to MAX_WINDOW_WEIGHT answers); an accurate one
raises it by PROBE, so capacity lost to a passing fault comes back and the factor settles just under the
point where predictions start to fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from epp.datastore import MetricsSnapshot, restarted

TOLERANCE = 0.05  # |predicted - actual| hit fraction taken as accurate (block rounding, an answer's tokens)
GAIN = 0.1
PROBE = 0.002
MIN_FACTOR = 0.5
MAX_WINDOW_WEIGHT = 5.0
WINDOW_KEEP = 0.9  # the weight of the sums so far when a scrape window is added to them
MIN_SUM_REQUESTS = 5  # requests the sums must hold (decayed as they are) before they move the factor


@dataclass(slots=True)
class _PodState:
    factor: float = 1.0
    # The requests sent since the pod's last scrape: predicted cached characters, prompt characters, count.
    hit_chars: float = 0.0
    prompt_chars: float = 0.0
    sent: int = 0
    base: MetricsSnapshot | None = None  # the scrape the open window started at
    # Decaying sums over the recent scrape windows: predicted cached and prompt characters sent, the pod's
    # hit and queried tokens.
    sum_hit_chars: float = 0.0
    sum_prompt_chars: float = 0.0
    sum_hits: float = 0.0
    sum_queries: float = 0.0
    sum_sent: float = 0.0
    per_answer: bool = False  # the pod reports cached tokens per answer: its scrape windows are not needed


class PrefixCapacity:
    """Per-pod factors on the index's LRU capacity; each update returns whether the pod's factor moved."""

    def __init__(self) -> None:
        self._pods: dict[str, _PodState] = {}
        self.scraped_at: dict[str, float] = {}  # pod -> `scraped_at` of the last scrape offered

    def factor(self, pod: str) -> float:
        state = self._pods.get(pod)
        return 1.0 if state is None else state.factor

    def forget(self, pod: str) -> None:
        """A pod that restarted (its cache is empty, the index forgot it) or left starts over."""
        self._pods.pop(pod, None)
        self.scraped_at.pop(pod, None)

    def sent(self, pod: str, hit_chars: float, prompt_chars: int) -> None:
        """A request went to `pod` with `hit_chars` of its `prompt_chars` predicted cached there."""
        state = self._pods.get(pod)
        if state is None:
            state = self._pods[pod] = _PodState()
        state.hit_chars += hit_chars
        state.prompt_chars += prompt_chars
        state.sent += 1

    def answered(self, pod: str, predicted: float, prompt_tokens: int, cached_tokens: int) -> bool:
        """An answer from `pod` reported `cached_tokens` of `prompt_tokens`; `predicted`: the fraction the
        index predicted when the request was sent."""
        state = self._pods.get(pod)
        if state is None or prompt_tokens <= 0:
            return False
        state.per_answer = True
        return _move(state, predicted, min(1.0, max(0.0, cached_tokens / prompt_tokens)), 1.0)

    def scraped(self, pod: str, metrics: MetricsSnapshot) -> bool:
        """A scrape of `pod`: the window since its previous scrape joins the recent sums when the pod
        queried tokens in it, and the sums become one observation when epp sent it requests too."""
        self.scraped_at[pod] = metrics.scraped_at
        state = self._pods.get(pod)
        hits, queries = metrics.prefix_cache_hits, metrics.prefix_cache_queries
        if state is None or hits is None or queries is None:
            return False
        base = state.base
        if base is not None and metrics.scraped_at <= base.scraped_at:
            return False  # the same scrape again
        growth = _growth(base, metrics, hits, queries)
        if growth is not None and growth[1] == 0.0:
            return False  # nothing scheduled since: the requests sent stay in the window
        moved = growth is not None and not state.per_answer and self._add_window(state, *growth)
        state.base = metrics
        state.hit_chars = state.prompt_chars = 0.0
        state.sent = 0
        return moved

    @staticmethod
    def _add_window(state: _PodState, hits: float, queries: float) -> bool:
        keep = WINDOW_KEEP
        state.sum_hit_chars = state.sum_hit_chars * keep + state.hit_chars
        state.sum_prompt_chars = state.sum_prompt_chars * keep + state.prompt_chars
        state.sum_hits = state.sum_hits * keep + hits
        state.sum_queries = state.sum_queries * keep + queries
        state.sum_sent = state.sum_sent * keep + state.sent
        if not state.sent or state.sum_sent < MIN_SUM_REQUESTS or state.sum_prompt_chars <= 0.0:
            return False
        predicted = state.sum_hit_chars / state.sum_prompt_chars
        actual = min(1.0, state.sum_hits / state.sum_queries)
        return _move(state, predicted, actual, min(float(state.sent), MAX_WINDOW_WEIGHT))


def _growth(
    base: MetricsSnapshot | None, cur: MetricsSnapshot, hits: float, queries: float
) -> tuple[float, float] | None:
    """The hit and queried tokens the pod counted since `base`; None without a base or after a restart (the
    datastore's rule, or hits that went back): then `cur` only becomes the new base."""
    if base is None or base.prefix_cache_hits is None or base.prefix_cache_queries is None:
        return None
    if restarted(base, cur) or hits < base.prefix_cache_hits:
        return None
    return hits - base.prefix_cache_hits, queries - base.prefix_cache_queries


def _move(state: _PodState, predicted: float, actual: float, weight: float) -> bool:
    if predicted <= 0.0 and actual <= 0.0:
        return False  # a cold prompt says nothing about what the pod keeps
    error = predicted - actual
    before = state.factor
    if abs(error) <= TOLERANCE:
        factor = before * (1.0 + PROBE * weight)
    else:
        factor = before * math.exp(-GAIN * error * weight)
    state.factor = min(1.0, max(MIN_FACTOR, factor))
    return state.factor != before
