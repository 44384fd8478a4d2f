"""`least-request-scorer`: pods with the fewest outstanding requests score higher.

A pod's load is `max(in_flight, running + waiting)`, min-max normalised like the queue scorer.
`in_flight` counts requests this picker sent and not yet finished; it is exact and current but blind to
traffic from other clients. The scraped `running + waiting` sees all traffic but lags by up to one scrape,
and it already includes the requests this picker sent before the scrape. Adding the two would count those
requests twice; taking the larger avoids that while still reacting to a burst this picker sends between
scrapes (in_flight rises immediately) and to load from elsewhere (the scrape exceeds in_flight).

With `replicas: R` (R pickers share the traffic evenly: Envoy round robin over ext_proc replicas, or
`epp gateway --workers R`), this picker sees about 1/R of the pickers' requests, so its in-flight count is
scaled up to estimate theirs: `max(R * in_flight, running + waiting)`. Unscaled, a burst every replica sends
to the same pod between two scrapes would look R times smaller to each of them (docs/replicas.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.scheduling.params import parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.types import Candidate, SchedulingContext
from scorers.queue_scorer import min_max_lower_is_better

TYPE_NAME = "least-request-scorer"


class LeastRequestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=1, description="pickers sharing the traffic evenly, this one included")


def load(candidate: Candidate, replicas: int = 1) -> int:
    """Outstanding requests on the pod, without counting this picker's requests twice; `replicas`
    scales this picker's in-flight count up to all the pickers'."""
    m = candidate.metrics
    return max(candidate.in_flight * replicas, m.running + m.waiting)


class LeastRequestScorer:
    def __init__(self, name: str = TYPE_NAME, replicas: int = 1) -> None:
        self.name = name
        self.replicas = replicas

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        r = self.replicas
        return min_max_lower_is_better({c.endpoint.name: float(load(c, r)) for c in candidates})


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> LeastRequestScorer:
    return LeastRequestScorer(name, parse_params(LeastRequestParams, name, params).replicas)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
