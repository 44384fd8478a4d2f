"""Plugin interfaces and the registry that builds plugins from config by type name."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from epp.datastore import Datastore
from epp.scheduling.types import Candidate, SchedulingContext


@runtime_checkable
class Filter(Protocol):
    """Narrows the candidates; returning an empty list means none can serve the request."""

    name: str

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]: ...


@runtime_checkable
class Scorer(Protocol):
    """Scores each candidate in 0..1 (higher is better), keyed by endpoint name."""

    name: str

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]: ...


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    candidate: Candidate
    score: float


@runtime_checkable
class Picker(Protocol):
    """Chooses one of the scored candidates (never called with an empty list)."""

    name: str

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredCandidate]) -> Candidate: ...


@runtime_checkable
class PostPick(Protocol):
    """Told which endpoint was picked, e.g. so the prefix index learns where a prompt now lives."""

    name: str

    def on_pick(self, ctx: SchedulingContext, picked: Candidate) -> None: ...


@dataclass(slots=True)
class PluginDeps:
    """What a plugin factory may use; passed in, never global."""

    datastore: Datastore
    rng: random.Random = field(default_factory=random.Random)
    # Plugins built before this one, by instance name, so a plugin can use another (a filter reading the
    # prefix scorer's match ratios, say) instead of redoing its work.
    plugins: dict[str, object] = field(default_factory=dict)


PluginFactory = Callable[[str, Mapping[str, Any], PluginDeps], object]
"""(instance name, parameters, deps) -> a plugin implementing one or more of the protocols above."""


class PluginConfigError(ValueError):
    """A plugin's parameters are wrong; the message names the parameter and why."""


class PluginRegistry:
    """Maps plugin type names (as written in config) to factories."""

    def __init__(self) -> None:
        self._factories: dict[str, PluginFactory] = {}

    def register(self, type_name: str, factory: PluginFactory) -> None:
        if type_name in self._factories:
            raise ValueError(f"plugin type {type_name!r} registered twice")
        self._factories[type_name] = factory

    def types(self) -> list[str]:
        return sorted(self._factories)

    def build(self, type_name: str, name: str, params: Mapping[str, Any], deps: PluginDeps) -> object:
        factory = self._factories.get(type_name)
        if factory is None:
            known = ", ".join(self.types())
            raise PluginConfigError(f"unknown plugin type {type_name!r} (known: {known})")
        return factory(name, params, deps)
