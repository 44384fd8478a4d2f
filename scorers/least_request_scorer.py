"""`least-request-scorer`: pods with the fewest outstanding requests score higher.

A pod's load is `max(in_flight, running + waiting)`, min-max normalised like the queue scorer.
`in_flight` counts requests this picker sent and not yet finished; it is exact and current but blind to
traffic from other clients. The scraped `running + waiting` sees all traffic but lags by up to one scrape,
and it already includes the requests this picker sent before the scrape. Adding the two would count those
requests twice; taking the larger avoids that while still reacting to a burst this picker sends between
scrapes (in_flight rises immediately) and to load from elsewhere (the scrape exceeds in_flight).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.params import NoParams, parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.types import Candidate, SchedulingContext
from scorers.queue_scorer import min_max_lower_is_better

TYPE_NAME = "least-request-scorer"


def load(candidate: Candidate) -> int:
    """Outstanding requests on the pod, without counting this picker's requests twice."""
    m = candidate.metrics
    return max(candidate.in_flight, m.running + m.waiting)


class LeastRequestScorer:
    def __init__(self, name: str = TYPE_NAME) -> None:
        self.name = name

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return min_max_lower_is_better({c.endpoint.name: float(load(c)) for c in candidates})


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> LeastRequestScorer:
    parse_params(NoParams, name, params)
    return LeastRequestScorer(name)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
