"""When a pod counts as saturated: one detector per scheduler, shared by its filters and by admission.

Configured once, by the EndpointPickerConfig's `saturationDetector` section (GIE's name and fields), so the
shedding filter, prefix affinity and the request director cannot disagree about which pods are full.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from epp.datastore import MetricsSnapshot
from epp.scheduling.types import Candidate, SchedulingContext

DEFAULT_QUEUE_DEPTH_THRESHOLD = 5
DEFAULT_KV_CACHE_UTIL_THRESHOLD = 0.8
_CYCLE_KEY = "saturation:unsaturated"  # (detector, the list it returned) in a cycle's state


class HasMetrics(Protocol):
    """A Candidate, or a datastore EndpointState (whose metrics may be missing)."""

    @property
    def metrics(self) -> MetricsSnapshot | None: ...


@dataclass(frozen=True, slots=True)
class SaturationDetector:
    """A pod is saturated when its queue or its KV cache is at or past these limits."""

    queue_depth_threshold: int = DEFAULT_QUEUE_DEPTH_THRESHOLD
    kv_cache_util_threshold: float = DEFAULT_KV_CACHE_UTIL_THRESHOLD

    def __post_init__(self) -> None:
        q, kv = self.queue_depth_threshold, self.kv_cache_util_threshold
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            raise ValueError(f"queue_depth_threshold must be an integer >= 1, got {q!r}")
        if not 0.0 < kv <= 1.0:
            raise ValueError(f"kv_cache_util_threshold must be in (0, 1], got {kv!r}")

    def is_saturated(self, candidate: HasMetrics) -> bool:
        """True when the pod's queue or KV cache is at a threshold; a pod without metrics counts as saturated
        (its load is unknown, so it is no place for work that may be shed)."""
        m = candidate.metrics
        if m is None:
            return True
        return m.waiting >= self.queue_depth_threshold or m.kv_cache_usage >= self.kv_cache_util_threshold

    def unsaturated(
        self, candidates: Sequence[Candidate], ctx: SchedulingContext | None = None
    ) -> list[Candidate]:
        """The candidates that are not saturated, in order (a list the caller must not modify).

        With the cycle's `ctx`, a list this detector returned earlier in the cycle is returned as it is
        (candidates are frozen for the cycle, so none of it became saturated): the affinity filters that run
        after the saturation filter do not check every pod again.
        """
        data = ctx.cycle.data if ctx is not None else None
        if data is not None:
            seen: tuple[SaturationDetector, list[Candidate]] | None = data.get(_CYCLE_KEY)
            if seen is not None and seen[0] is self and seen[1] is candidates:
                return seen[1]
        is_saturated = self.is_saturated
        fresh = [c for c in candidates if not is_saturated(c)]
        if data is not None:
            data[_CYCLE_KEY] = (self, fresh)
        return fresh

    def all_saturated(self, candidates: Iterable[HasMetrics]) -> bool:
        """True when there is at least one candidate and every one is saturated.

        An empty list is NOT saturated (unlike GIE, which treats "no pods" as saturated): with no endpoint the
        answer must be 503 (NoEndpointError from scheduling) for every criticality, not 429 for sheddable
        requests only.
        """
        is_saturated = self.is_saturated
        seen = False
        for c in candidates:
            if not is_saturated(c):
                return False
            seen = True
        return seen

    def describe(self) -> str:
        """The thresholds as a reason fragment, e.g. for a shed error's message."""
        return f"waiting >= {self.queue_depth_threshold} or KV cache >= {self.kv_cache_util_threshold}"
