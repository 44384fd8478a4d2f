"""`max-score-picker`: the candidate with the highest weighted total; exact ties broken at random."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.params import NoParams, parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry, ScoredCandidate
from epp.scheduling.types import Candidate, SchedulingContext

TYPE_NAME = "max-score-picker"


class MaxScorePicker:
    def __init__(self, name: str = TYPE_NAME, rng: random.Random | None = None) -> None:
        self.name = name
        self.rng = rng or random.Random()

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredCandidate]) -> Candidate:
        best = max(s.score for s in scored)
        top = [s.candidate for s in scored if s.score == best]
        if len(top) == 1:
            return top[0]
        return top[self.rng.randrange(len(top))]


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> MaxScorePicker:
    parse_params(NoParams, name, params)
    return MaxScorePicker(name, deps.rng)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
