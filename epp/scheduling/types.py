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
    cache_salt: str | None = None  # vLLM shares no KV cache across salts, so prefix matching keys on it


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
    """The pick and why: per-scorer scores (clamped to 0..1) by endpoint name, and the weighted total.

    `context` is the cycle that made the pick: pass it to the profile's lifecycle hooks, and back to
    `Scheduler.schedule(context=...)` when retrying the same request.
    """

    endpoint: Endpoint
    profile: str
    scores: dict[str, dict[str, float]]  # scorer name -> endpoint name -> 0..1
    total_scores: dict[str, float]  # endpoint name -> weighted sum
    candidates_after_filters: list[str]
    context: SchedulingContext
    prefix_match_ratio: float | None = None  # for the picked endpoint, when a prefix plugin ran
    affinity_narrowed: bool = False  # an affinity filter removed candidates (a retry would see more)
    # When affinity narrowed: the candidates the first affinity filter was given, and that filter's place in
    # the profile, so the fallbacks are ranked without filtering the pool again (Scheduler.rank_relaxed).
    before_affinity: list[Candidate] | None = None
    affinity_at: int = 0

    def ranked(self) -> list[str]:
        """Candidates after the filters, the picked one first, then by falling total score.

        Ties keep the filters' order (the sort is stable), so fallbacks are deterministic.
        """
        picked = self.endpoint.name
        totals = self.total_scores
        rest = [n for n in self.candidates_after_filters if n != picked]
        rest.sort(key=lambda n: -totals.get(n, 0.0))
        return [picked, *rest]


CLIENT_GONE = "client_gone"
"""AttemptReport.error when the client left, not the pod: plugins must not blame the pod for it."""


@dataclass(slots=True)
class AttemptReport:
    """How one attempt to serve a request on one endpoint went (filled by the front end)."""

    endpoint: Endpoint
    status: int | None = None  # HTTP status the pod answered with; None when it never answered
    responded: bool = False  # the pod sent a response (status line) at all
    ttft_s: float | None = None  # body parsed -> first content token
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    # e.g. "connect_failed", "reset", "first_byte_timeout", "chunk_timeout", "http_5xx", "aborted",
    # "client_gone"
    error: str | None = None


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
