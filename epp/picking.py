"""How decisions are recorded and how a refused request is answered, for every front end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import orjson

from epp.request import RequestError
from epp.scheduling.types import NoEndpointError, ShedError

RESULT_OK = "ok"
RESULT_SHED = "shed"
RESULT_NO_ENDPOINT = "no_endpoint"
RESULT_BAD_REQUEST = "bad_request"
RESULT_ERROR = "error"  # an unexpected exception (a bug or an unknown scheduling error)


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


def result_label(exc: BaseException) -> str:
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
