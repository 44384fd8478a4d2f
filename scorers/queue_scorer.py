"""`queue-scorer`: pods with fewer waiting requests score higher (min-max normalised over the candidates)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.params import NoParams, parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.types import Candidate, SchedulingContext

TYPE_NAME = "queue-scorer"


def min_max_lower_is_better(values: Mapping[str, float]) -> dict[str, float]:
    """(max - v) / (max - min) per key; 1.0 for all when every value is equal."""
    if not values:
        return {}
    lo = min(values.values())
    hi = max(values.values())
    span = hi - lo
    if span <= 0:
        return dict.fromkeys(values, 1.0)
    return {name: (hi - v) / span for name, v in values.items()}


class QueueScorer:
    """Scores by the scraped number of waiting requests."""

    def __init__(self, name: str = TYPE_NAME) -> None:
        self.name = name

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return min_max_lower_is_better({c.endpoint.name: float(c.metrics.waiting) for c in candidates})


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> QueueScorer:
    parse_params(NoParams, name, params)
    return QueueScorer(name)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
