"""`round-robin-picker`: cycles through the candidates in name order, ignoring scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.params import NoParams, parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry, ScoredCandidate
from epp.scheduling.types import Candidate, SchedulingContext

TYPE_NAME = "round-robin-picker"


class RoundRobinPicker:
    """A counter indexes into the name-sorted candidates, so the order is stable whatever the input order
    and a changing candidate set only shifts where the cycle continues."""

    def __init__(self, name: str = TYPE_NAME) -> None:
        self.name = name
        self._counter = 0

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredCandidate]) -> Candidate:
        ordered = sorted((s.candidate for s in scored), key=lambda c: c.endpoint.name)
        picked = ordered[self._counter % len(ordered)]
        self._counter += 1
        return picked


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> RoundRobinPicker:
    parse_params(NoParams, name, params)
    return RoundRobinPicker(name)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
