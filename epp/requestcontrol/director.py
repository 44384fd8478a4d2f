"""The director: one owner of every request, from parse to the last outcome, for every front end.

parse -> admit -> schedule -> (per attempt) before-request hooks -> the transport forwards -> response
started / first content token / completed / failed -> record. Envoy's ext_proc server, `epp gateway` and
`POST /pick` are thin transports over it: they turn their protocol's events into calls on the
`RequestLifecycle` that `Director.begin` returns, and never touch in-flight counts, the prefix index or
outlier detection themselves.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection, Container, Mapping
from dataclasses import dataclass
from typing import Protocol

from epp.datastore import Datastore
from epp.health.outlier import OutlierDetector
from epp.picking import DecisionRecorder, result_label
from epp.request import (
    INFERENCE_PATHS,
    ModelResolver,
    ParsedRequest,
    RequestError,
    bodyless_request,
    parse_request,
)
from epp.requestcontrol.lifecycle import AttemptObserver, NullAttemptObserver, RequestLifecycle
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import (
    Candidate,
    Criticality,
    LLMRequest,
    SchedulingResult,
    ShedError,
)

logger = logging.getLogger(__name__)


class AdapterNames(Protocol):
    """Which model names are LoRA adapters (from the pods' /v1/models `parent` and their LoRA metrics)."""

    def is_adapter(self, name: str) -> bool: ...


class _ReportedAdapters:
    """Without a model catalog: the adapters the pods' LoRA metrics report."""

    def __init__(self, datastore: Datastore) -> None:
        self._datastore = datastore

    def is_adapter(self, name: str) -> bool:
        return self._datastore.reports_adapter(name)


class _AdapterContainer(Container[str]):
    """The adapter names as the Container the parser asks, one name at a time."""

    __slots__ = ("_names",)

    def __init__(self, names: AdapterNames) -> None:
        self._names = names

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._names.is_adapter(name)


@dataclass(frozen=True, slots=True)
class DirectorSettings:
    strategy_name: str
    profile: str | None = None  # the scheduler's default profile when None
    max_attempts: int = 2  # pods tried per request: the first pick and one retry


class Director:
    """Builds a RequestLifecycle per request; every dependency is passed in."""

    def __init__(
        self,
        scheduler: Scheduler,
        datastore: Datastore,
        resolver: ModelResolver | None,
        recorder: DecisionRecorder,
        rng: random.Random,
        settings: DirectorSettings,
        outlier: OutlierDetector | None = None,
        adapters: AdapterNames | None = None,
        observer: AttemptObserver | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.datastore = datastore
        self.resolver = resolver  # None: no InferenceModels configured, models pass through
        self.recorder = recorder
        self.rng = rng
        self.settings = settings
        self.strategy_name = settings.strategy_name
        self.outlier = outlier
        self.observer = observer or NullAttemptObserver()
        self._adapters = _AdapterContainer(adapters or _ReportedAdapters(datastore))

    def parse(self, body: bytes, headers: Mapping[str, str], path: str) -> ParsedRequest:
        """Parse one request (`headers` with lower-case names); RequestError (4xx) when it is refused.

        An empty body on a non-inference path (e.g. GET /v1/models) is a request with an empty prompt.
        """
        if not body and path.split("?", 1)[0] not in INFERENCE_PATHS:
            return ParsedRequest(bodyless_request(headers), None)
        if not body:
            raise RequestError(400, "Request body is empty.", code="invalid_body")
        return parse_request(body, headers, path, self.resolver, self.rng, self._adapters)

    def begin(self, body: bytes, headers: Mapping[str, str], path: str) -> RequestLifecycle:
        """parse -> admit -> schedule, recorded; raises RequestError or SchedulingError for the transport.

        Decision latency runs from here (the body is in hand) to the pick.
        """
        started = time.perf_counter()
        try:
            parsed = self.parse(body, headers, path)
        except Exception as exc:
            self._record_failure(exc, started)
            raise
        return self.schedule(parsed, started)

    def schedule(self, parsed: ParsedRequest, started: float | None = None) -> RequestLifecycle:
        """admit -> schedule an already parsed request; `started` (perf_counter) is when parsing began."""
        start = time.perf_counter() if started is None else started
        request = parsed.request
        try:
            self._admit(request)
            result = self.scheduler.schedule(request, self.settings.profile)
        except Exception as exc:
            self._record_failure(exc, start)
            raise
        latency = time.perf_counter() - start
        self.recorder.record_decision(
            self.strategy_name, "ok", latency, result.prefix_match_ratio, result.endpoint.name
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "pick request_id=%s model=%s target=%s endpoint=%s prefix_ratio=%s totals=%s latency_ms=%.3f",
                request.request_id,
                request.model,
                request.target_model,
                result.endpoint.address,
                result.prefix_match_ratio,
                result.total_scores,
                latency * 1000,
            )
        return RequestLifecycle(self, request, result, parsed.rewritten_body, start)

    def reschedule(self, lifecycle: RequestLifecycle, excluded: Collection[str]) -> SchedulingResult:
        """Schedule again without `excluded`, over the candidates before affinity (saturation applies)."""
        return self.scheduler.schedule(
            lifecycle.request,
            lifecycle.result.profile,
            excluded=excluded,
            relax_affinity=True,
            context=lifecycle.result.context,
        )

    def _admit(self, request: LLMRequest) -> None:
        """Shed a sheddable request when every schedulable pod is saturated (GIE's admission rule)."""
        if request.criticality is not Criticality.SHEDDABLE:
            return
        detector = self.scheduler.saturation
        states = self.datastore.schedulable()
        candidates = [Candidate.from_state(s) for s in states]
        if candidates and detector.all_saturated(candidates):
            raise ShedError(
                f"all {len(candidates)} endpoints are saturated ({detector.describe()}); "
                "sheddable request shed"
            )

    def _record_failure(self, exc: BaseException, start: float) -> None:
        self.recorder.record_decision(
            self.strategy_name, result_label(exc), time.perf_counter() - start, None, None
        )
