"""When a pod counts as saturated: shared by the shedding filter and prefix affinity."""

from __future__ import annotations

from dataclasses import dataclass

from epp.scheduling.types import Candidate


@dataclass(frozen=True, slots=True)
class SaturationThresholds:
    """A pod is saturated when its queue or its KV cache is at or past these limits."""

    queue_depth: int = 5
    kv_cache_usage: float = 0.8

    def is_saturated(self, candidate: Candidate) -> bool:
        m = candidate.metrics
        return m.waiting >= self.queue_depth or m.kv_cache_usage >= self.kv_cache_usage
