"""Plugin interfaces and the registry that builds plugins from config by type name."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from epp.datastore import Datastore, Endpoint
from epp.kv_events.precise_index import PreciseIndex
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import AttemptReport, Candidate, SchedulingContext


@runtime_checkable
class Filter(Protocol):
    """Narrows the candidates; returning an empty list means none can serve the request.

    Optional class attribute `affinity: bool` (default False): True marks a filter that narrows by
    preference (e.g. prefix affinity) rather than by need; retries with `relax_affinity` skip it.
    """

    name: str

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]: ...


@runtime_checkable
class Scorer(Protocol):
    """Scores each candidate in 0..1 (higher is better), keyed by endpoint name.

    The scheduler clamps every value to 0..1 (NaN counts as 0) before weighting it.
    """

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


# -- request lifecycle hooks: called by the request director, not by the scheduler ----------------------
# `ctx` is the SchedulingResult.context of the cycle that picked the endpoint. A retry reuses that context,
# so a hook may keep per-request state in ctx.cycle.data across attempts.


@runtime_checkable
class PreRequest(Protocol):
    """The request is being sent to `endpoint` (called for every attempt, including retries)."""

    name: str

    def pre_request(self, ctx: SchedulingContext, endpoint: Endpoint) -> None: ...


@runtime_checkable
class ResponseStarted(Protocol):
    """The pod answered with a status line."""

    name: str

    def response_started(self, ctx: SchedulingContext, endpoint: Endpoint, status: int) -> None: ...


@runtime_checkable
class FirstToken(Protocol):
    """The first content token arrived, `ttft_s` after the body was parsed."""

    name: str

    def first_token(self, ctx: SchedulingContext, endpoint: Endpoint, ttft_s: float) -> None: ...


@runtime_checkable
class ResponseComplete(Protocol):
    """The attempt ended with a full response."""

    name: str

    def response_complete(self, ctx: SchedulingContext, report: AttemptReport) -> None: ...


@runtime_checkable
class RequestFailed(Protocol):
    """The attempt ended without a full response; `report.responded` says whether the pod answered at all."""

    name: str

    def request_failed(self, ctx: SchedulingContext, report: AttemptReport) -> None: ...


# -- observation -----------------------------------------------------------------------------------------
EXTENSION_FILTER = "filter"
EXTENSION_SCORER = "scorer"
EXTENSION_PICKER = "picker"


class PluginTimer(Protocol):
    """Told how long each plugin call took; `extension_point` is one of the EXTENSION_* values."""

    def observe_plugin(
        self, extension_point: str, plugin_type: str, plugin_name: str, seconds: float
    ) -> None: ...


@dataclass(slots=True)
class PluginDeps:
    """What a plugin factory may use; passed in, never global."""

    datastore: Datastore
    rng: random.Random = field(default_factory=random.Random)
    # The scheduler's one detector (from the config's `saturationDetector` section), shared by every plugin
    # that asks whether a pod is saturated.
    saturation: SaturationDetector = field(default_factory=SaturationDetector)
    # Plugins built before this one, by instance name, so a plugin can use another (a filter reading the
    # prefix scorer's match ratios, say) instead of redoing its work.
    plugins: dict[str, object] = field(default_factory=dict)
    # The pool's KV-event index (one per pool, fed by the pods' KV events) for `precise-prefix-cache-scorer`;
    # None when the pool follows no events.
    kv_index: PreciseIndex | None = None


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
