"""`random-picker`: a uniformly random candidate, ignoring scores."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.params import NoParams, parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry, ScoredCandidate
from epp.scheduling.types import Candidate, SchedulingContext

TYPE_NAME = "random-picker"


class RandomPicker:
    def __init__(self, name: str = TYPE_NAME, rng: random.Random | None = None) -> None:
        self.name = name
        self.rng = rng or random.Random()

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredCandidate]) -> Candidate:
        return scored[self.rng.randrange(len(scored))].candidate


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> RandomPicker:
    parse_params(NoParams, name, params)
    return RandomPicker(name, deps.rng)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
