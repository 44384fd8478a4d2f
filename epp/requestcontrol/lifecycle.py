"""One request's life after its first decision: attempts on pods, their outcomes, retries and fallbacks.

A transport calls, per attempt: `send()` (in flight, before-request hooks such as the prefix-index update),
then `response_started(status)`, `first_token()`, and `complete(...)` or `fail(error)`. After a failure that
reached the client with no byte, `retry()` schedules again without the pods that failed, over the candidates
before affinity, so a dead prefix pod costs no request. In-flight counts, the prefix index, outlier detection
and the outcome hooks all follow the pod that actually served.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from epp.datastore import Endpoint
from epp.health.outlier import AttemptResult
from epp.scheduling.types import (
    CLIENT_GONE,
    AttemptReport,
    LLMRequest,
    SchedulingError,
    SchedulingResult,
)

if TYPE_CHECKING:
    from epp.requestcontrol.director import Director

# AttemptReport.error values.
CONNECT_FAILED = "connect_failed"  # refused, unreachable, connect timeout: the pod never saw the request
RESET = "reset"  # the connection broke before the pod answered
FIRST_BYTE_TIMEOUT = "first_byte_timeout"
CHUNK_TIMEOUT = "chunk_timeout"  # the pod went silent mid-answer
ABORTED = "aborted"  # the pod broke off mid-answer
HTTP_5XX = "http_5xx"  # the pod answered 5xx and the answer was not relayed (retried elsewhere)
FALLBACK = "fallback"  # Envoy: the pick failed and a fallback endpoint served instead
NO_UPSTREAM = "no_upstream"  # Envoy answered itself: no pod it tried answered
UNKNOWN = "unknown"  # the outcome never came
_UNREACHABLE = frozenset({CONNECT_FAILED, RESET})


class AttemptObserver(Protocol):
    """Told how every attempt ended (`outcome`: "ok", a 5xx status class or an error) and about retries."""

    def on_attempt(self, report: AttemptReport, outcome: str) -> None: ...

    def on_retry(self, reason: str) -> None: ...


class NullAttemptObserver:
    def on_attempt(self, report: AttemptReport, outcome: str) -> None:
        return None

    def on_retry(self, reason: str) -> None:
        return None


class RequestLifecycle:
    """Created by `Director.schedule`; not thread-safe (one event loop)."""

    __slots__ = (
        "_current",
        "_director",
        "_holding",
        "_profile",
        "arrived",
        "attempts",
        "endpoint",
        "failed",
        "first_token_s",
        "request",
        "result",
        "rewritten_body",
        "started",
    )

    def __init__(
        self,
        director: Director,
        request: LLMRequest,
        result: SchedulingResult,
        rewritten_body: bytes | None,
        started: float,
    ) -> None:
        self._director = director
        self.request = request
        self.result = result  # the latest decision (a retry replaces it)
        self.rewritten_body = rewritten_body
        self.started = started  # perf_counter() when parsing began: decision latency starts here
        self.arrived = started  # when the request reached epp; a transport that knows sets it earlier
        self.endpoint: Endpoint = result.endpoint  # the pod of the current (or next) attempt
        self.attempts = 0
        self.failed: list[str] = []  # pods that failed this request, in order
        self.first_token_s: float | None = None  # arrival -> first content token
        self._current: AttemptReport | None = None
        self._holding = False  # the open attempt's pod counts this request in flight
        self._profile = director.scheduler.profile(result.profile)  # whose hooks run

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def in_attempt(self) -> bool:
        return self._current is not None

    @property
    def responded(self) -> bool:
        """The open attempt's pod has answered (status received)."""
        return self._current is not None and self._current.responded

    # -- one attempt ------------------------------------------------------------------------------------
    def send(self, in_flight: bool = True) -> Endpoint:
        """Start an attempt on `endpoint`: count it in flight (unless told the request is already over)
        and run the before-request hooks."""
        if self._current is not None:
            raise RuntimeError("send() while an attempt is open")
        endpoint = self.endpoint
        self.attempts += 1
        self._current = AttemptReport(endpoint)
        if in_flight:
            self._director.datastore.acquire(endpoint.name)
            self._holding = True
        ctx = self.result.context
        for hook in self._profile.pre_requests:
            hook.pre_request(ctx, endpoint)
        return endpoint

    def hand_off(self) -> Endpoint:
        """The caller forwards the request itself and reports nothing back (`POST /pick`): the
        before-request hooks run (the prefix index learns the pick), nothing is counted in flight."""
        ctx = self.result.context
        for hook in self._profile.pre_requests:
            hook.pre_request(ctx, self.endpoint)
        return self.endpoint

    def response_started(self, status: int) -> None:
        """The pod answered with `status` (headers received)."""
        report = self._current
        if report is None:
            return
        report.responded = True
        report.status = status
        self._director.datastore.record_success(report.endpoint.name)
        ctx = self.result.context
        for hook in self._profile.response_started:
            hook.response_started(ctx, report.endpoint, status)

    def first_token(self, now: float | None = None) -> float:
        """The first chunk carrying content reached the client; returns TTFT (from arrival) in seconds."""
        if self.first_token_s is None:
            self.first_token_s = (time.perf_counter() if now is None else now) - self.arrived
            report = self._current
            if report is not None:
                report.ttft_s = self.first_token_s
                ctx = self.result.context
                for hook in self._profile.first_tokens:
                    hook.first_token(ctx, report.endpoint, self.first_token_s)
        return self.first_token_s

    def complete(
        self,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cached_prompt_tokens: int | None = None,
    ) -> None:
        """The pod's whole answer was relayed (any status)."""
        report = self._end()
        if report is None:
            return
        report.prompt_tokens = prompt_tokens
        report.completion_tokens = completion_tokens
        report.cached_prompt_tokens = cached_prompt_tokens
        status = report.status if report.status is not None else 200
        self._outlier(report.endpoint.name, AttemptResult.from_status(status))
        self._director.observer.on_attempt(report, _status_outcome(status))
        ctx = self.result.context
        for hook in self._profile.response_completes:
            hook.response_complete(ctx, report)

    def fail(self, error: str, status: int | None = None) -> None:
        """The attempt ended without a whole answer: `error` is one of this module's error names."""
        report = self._end()
        if report is None:
            return
        report.error = error
        if status is not None:
            report.status = status
        name = report.endpoint.name
        if error != CLIENT_GONE:
            self.failed.append(name)
            kind = AttemptResult.from_status(status) if status is not None else AttemptResult.GATEWAY_ERROR
            self._outlier(name, kind)
            if error in _UNREACHABLE and not report.responded:
                self._director.datastore.mark_unreachable(name, error)
        self._director.observer.on_attempt(report, error)
        ctx = self.result.context
        for hook in self._profile.request_failures:
            hook.request_failed(ctx, report)

    def close(self) -> None:
        """End an attempt still open (the client left, or the transport is done): idempotent."""
        if self._current is not None:
            self.fail(CLIENT_GONE)

    def release(self) -> None:
        """The request is over but its outcome comes later (Envoy's access log): stop counting it in
        flight, keep the attempt open for `resolve`."""
        if self._holding:
            self._holding = False
            self._director.datastore.release(self.endpoint.name)

    def resolve(self, status: int, upstream: str) -> None:
        """The outcome Envoy logged once the request was over: `status` sent to the client (0 when the
        client left first) and the address of the pod that answered ("" when Envoy answered itself, e.g.
        every pod it tried failed)."""
        if self._current is None:
            return
        if status == 0:
            self.close()
        elif not upstream:
            self.fail(NO_UPSTREAM, status if status >= 500 else None)
        else:
            self.answered(status, upstream)
            self.complete()

    def answered(self, status: int, address: str) -> None:
        """Envoy relays an answer with `status` from the pod at `address` (unknown or not in the pool:
        taken to be the pick's); another pod than the pick means the pick failed and that pod served."""
        if address and address != self.endpoint.address:  # usually the pick itself answered
            served = self._director.datastore.find_by_address(address)
            if served is not None and served.endpoint.name != self.endpoint.name:
                self.served_by(served.endpoint)
        self.response_started(status)

    def abandon(self) -> None:
        """No outcome will come (no access log configured): end the attempt, recording nothing."""
        report = self._end()
        if report is not None:
            self._director.observer.on_attempt(report, UNKNOWN)

    # -- after a failure --------------------------------------------------------------------------------
    def retry(self, reason: str) -> Endpoint | None:
        """The next pod to try after a failure, or None (attempts used up, or no other candidate)."""
        director = self._director
        if self.attempts >= director.settings.max_attempts or self._current is not None:
            return None
        try:
            result = director.reschedule(self, frozenset(self.failed))
        except SchedulingError:
            return None
        self.result = result
        self._profile = director.scheduler.profile(result.profile)  # the retry's decision's hooks
        self.endpoint = result.endpoint
        director.observer.on_retry(reason)
        return self.endpoint

    def fallbacks(self, count: int) -> list[Endpoint]:
        """Up to `count` other pods for Envoy to try if the pick fails, best first (same rules as retry)."""
        if count <= 0:
            return []
        director = self._director
        out = []
        for name in director.scheduler.rank_relaxed(self.result, (self.endpoint.name,)):
            state = director.datastore.get(name)
            if state is not None:  # (the ranking leaves the pick out)
                out.append(state.endpoint)
                if len(out) == count:
                    break
        return out

    def served_by(self, endpoint: Endpoint) -> None:
        """Envoy answered from `endpoint`, not the open attempt's pod: that pod failed, this one serves."""
        report = self._current
        if report is None or report.endpoint.name == endpoint.name:
            return
        holding = self._holding
        self.fail(FALLBACK)
        self.endpoint = endpoint
        self._director.observer.on_retry(FALLBACK)
        self.send(in_flight=holding)

    # -- internals --------------------------------------------------------------------------------------
    def _end(self) -> AttemptReport | None:
        report, self._current = self._current, None
        if report is not None and self._holding:
            self._holding = False
            self._director.datastore.release(report.endpoint.name)
        return report

    def _outlier(self, name: str, kind: AttemptResult) -> None:
        outlier = self._director.outlier
        if outlier is not None:
            outlier.record(name, kind)


def _status_outcome(status: int) -> str:
    return "ok" if status < 500 else "5xx"
