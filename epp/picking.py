"""The pick service both servers use: parse the request, schedule it, record the decision.

It never counts the request as in flight: the server acquires the picked endpoint on the datastore after a
successful pick and releases it when the request ends.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson

from epp.datastore import Datastore
from epp.request import INFERENCE_PATHS, ModelResolver, RequestError, bodyless_request, parse_request
from epp.scheduling.types import LLMRequest, NoEndpointError, SchedulingResult, ShedError

logger = logging.getLogger(__name__)

RESULT_OK = "ok"
RESULT_SHED = "shed"
RESULT_NO_ENDPOINT = "no_endpoint"
RESULT_BAD_REQUEST = "bad_request"
RESULT_ERROR = "error"  # an unexpected exception (a bug or an unknown scheduling error)


class SchedulerLike(Protocol):
    def schedule(self, request: LLMRequest, profile: str | None = None) -> SchedulingResult: ...


class DecisionRecorder(Protocol):
    """Told about every decision; `result` is one of the RESULT_* values above."""

    def record_decision(
        self,
        strategy: str,
        result: str,
        latency_s: float,
        prefix_match_ratio: float | None,
        endpoint: str | None,
    ) -> None: ...


class NullRecorder:
    """A DecisionRecorder that records nothing."""

    def record_decision(
        self,
        strategy: str,
        result: str,
        latency_s: float,
        prefix_match_ratio: float | None,
        endpoint: str | None,
    ) -> None:
        return None


@dataclass(slots=True)
class PickOutcome:
    request: LLMRequest
    result: SchedulingResult
    rewritten_body: bytes | None  # new body bytes when the model was rewritten, else None


class _PodAdapters:
    """The datastore's reported LoRA adapters as a Container, looked up only when a name needs it."""

    __slots__ = ("_datastore",)

    def __init__(self, datastore: Datastore) -> None:
        self._datastore = datastore

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._datastore.reports_adapter(name)


class PickService:
    """parse -> schedule -> record. Raises RequestError or SchedulingError for the server to answer."""

    def __init__(
        self,
        scheduler: SchedulerLike,
        datastore: Datastore,
        resolver: ModelResolver | None,
        recorder: DecisionRecorder,
        rng: random.Random,
        strategy_name: str,
        profile: str | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.datastore = datastore
        self.resolver = resolver  # None: no InferenceModels configured, models pass through
        self.recorder = recorder
        self.rng = rng
        self.strategy_name = strategy_name
        self.profile = profile
        self._adapters = _PodAdapters(datastore)

    def pick(self, body: bytes, headers: Mapping[str, str], path: str) -> PickOutcome:
        """Pick an endpoint for one request. `headers` must have lower-case names.

        An empty body on a non-inference path (e.g. GET /v1/models) is picked with an empty prompt. The
        latency recorded covers parsing and scheduling.
        """
        start = time.perf_counter()
        try:
            request, rewritten = self.parse(body, headers, path)
        except Exception as exc:
            self._record_failure(exc, start)
            raise
        return self.schedule(request, rewritten, start)

    def parse(self, body: bytes, headers: Mapping[str, str], path: str) -> tuple[LLMRequest, bytes | None]:
        """The parse half of `pick` (records nothing): the request and the rewritten body, if any."""
        if not body and path.split("?", 1)[0] not in INFERENCE_PATHS:
            return bodyless_request(headers), None
        if not body:
            raise RequestError(400, "Request body is empty.", code="invalid_body")
        parsed = parse_request(body, headers, path, self.resolver, self.rng, self._adapters)
        return parsed.request, parsed.rewritten_body

    def schedule(
        self, request: LLMRequest, rewritten: bytes | None = None, started: float | None = None
    ) -> PickOutcome:
        """The schedule half of `pick`, recorded; `started` (time.perf_counter()) is when parsing began."""
        start = time.perf_counter() if started is None else started
        try:
            result = self.scheduler.schedule(request, self.profile)
        except Exception as exc:
            self._record_failure(exc, start)
            raise
        latency = time.perf_counter() - start
        self.recorder.record_decision(
            self.strategy_name, RESULT_OK, latency, result.prefix_match_ratio, result.endpoint.name
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
        return PickOutcome(request, result, rewritten)

    def _record_failure(self, exc: BaseException, start: float) -> None:
        self.recorder.record_decision(
            self.strategy_name, _result_label(exc), time.perf_counter() - start, None, None
        )


def _result_label(exc: BaseException) -> str:
    if isinstance(exc, RequestError):
        return RESULT_BAD_REQUEST
    if isinstance(exc, ShedError):
        return RESULT_SHED
    if isinstance(exc, NoEndpointError):
        return RESULT_NO_ENDPOINT
    return RESULT_ERROR


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    body: bytes  # OpenAI-style JSON error


def error_reply(exc: BaseException) -> ErrorReply:
    """The HTTP status and OpenAI-style JSON body for a failed pick.

    Anything unexpected becomes a generic 503 that does not describe it (no leak); the caller logs it.
    """
    if isinstance(exc, RequestError):
        return _reply(exc.status, exc.message, exc.type, exc.param, exc.code)
    if isinstance(exc, ShedError):
        return _reply(
            429,
            str(exc) or "The inference pool is saturated; request shed.",
            "rate_limit_error",
            None,
            exc.code,
        )
    if isinstance(exc, NoEndpointError):
        return _reply(
            503, str(exc) or "No endpoint can serve the request.", "service_unavailable", None, exc.code
        )
    return _reply(
        503, "The endpoint picker could not route the request.", "service_unavailable", None, "epp_error"
    )


def _reply(status: int, message: str, type_: str, param: str | None, code: str | None) -> ErrorReply:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return ErrorReply(status, orjson.dumps(body))
