"""`kv-cache-utilization-scorer`: pods with more free KV cache score higher (1 - usage)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.params import NoParams, parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.types import Candidate, SchedulingContext

TYPE_NAME = "kv-cache-utilization-scorer"


class KVCacheUtilizationScorer:
    """Scores 1 - kv_cache_usage, clamped to 0..1 in case a server reports usage slightly out of range."""

    def __init__(self, name: str = TYPE_NAME) -> None:
        self.name = name

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return {c.endpoint.name: min(1.0, max(0.0, 1.0 - c.metrics.kv_cache_usage)) for c in candidates}


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> KVCacheUtilizationScorer:
    parse_params(NoParams, name, params)
    return KVCacheUtilizationScorer(name)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
