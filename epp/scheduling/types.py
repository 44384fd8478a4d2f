"""Values that flow through one scheduling decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from epp.datastore import Endpoint, EndpointState, MetricsSnapshot


class Criticality(Enum):
    CRITICAL = "Critical"
    STANDARD = "Standard"
    SHEDDABLE = "Sheddable"


@dataclass(slots=True)
class LLMRequest:
    """A parsed inference request, as the scheduler sees it."""

    request_id: str
    model: str  # the model the client asked for
    target_model: str  # after InferenceModel rewrite (often a LoRA adapter); what the pod will run
    prompt: str  # text used for prefix matching (chat messages flattened, roles included)
    criticality: Criticality = Criticality.STANDARD
    headers: Mapping[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    lora_adapter: str | None = None  # target_model when it names a LoRA adapter, else None


@dataclass(frozen=True, slots=True)
class Candidate:
    """An endpoint as offered to plugins: its metrics and epp's own in-flight count, frozen for the cycle."""

    endpoint: Endpoint
    metrics: MetricsSnapshot
    in_flight: int

    @property
    def name(self) -> str:
        return self.endpoint.name

    @classmethod
    def from_state(cls, state: EndpointState) -> Candidate:
        assert state.metrics is not None
        return cls(state.endpoint, state.metrics, state.in_flight)


@dataclass(slots=True)
class CycleState:
    """Scratch space shared by the plugins of one scheduling cycle (e.g. prefix hashes computed once)."""

    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SchedulingContext:
    request: LLMRequest
    cycle: CycleState = field(default_factory=CycleState)


@dataclass(slots=True)
class SchedulingResult:
    """The pick and why: per-scorer raw scores by endpoint name, and the weighted total."""

    endpoint: Endpoint
    profile: str
    scores: dict[str, dict[str, float]]  # scorer name -> endpoint name -> 0..1
    total_scores: dict[str, float]  # endpoint name -> weighted sum
    candidates_after_filters: list[str]
    prefix_match_ratio: float | None = None  # for the picked endpoint, when a prefix plugin ran


class SchedulingError(Exception):
    """Base for decisions that end without an endpoint; `status` is the HTTP status to answer with."""

    status = 500
    code = "scheduling_error"


class ShedError(SchedulingError):
    """The pool is saturated and the request is sheddable."""

    status = 429
    code = "request_shed"


class NoEndpointError(SchedulingError):
    """No endpoint is schedulable (none known, all stale, or all filtered out)."""

    status = 503
    code = "no_endpoint"
