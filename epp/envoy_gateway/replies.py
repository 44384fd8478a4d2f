"""Envoy's own error replies, rendered as OpenAI-style JSON errors (`local_reply_config`).

Every reply Envoy makes itself is a local reply: the codec's (400 malformed request, 431 headers too large,
501 unsupported transfer-encoding), the connection manager's (408 request or header timeout, 413 body over
the buffer limit), the router's (503 upstream failures, 504 upstream timeout), the ext_proc filter's (502 epp
failed, 504 epp did not answer in time) and epp's own ImmediateResponses, which are already JSON and must keep
their body. The mappers therefore match only what epp never answers: the statuses below, or a response flag
(Envoy sets one for each of its failures; an ImmediateResponse has none). The first match wins.
"""

from __future__ import annotations

from typing import Any

EXTPROC_ERROR_STATUS = 502  # what a failing epp (fail-closed) answers: Bad Gateway; epp never answers 502
EXTPROC_TIMEOUT_STATUS = 504  # Envoy's answer when epp does not answer within message_timeout


def error_json(message: str, type_: str, code: str) -> dict[str, Any]:
    """A SubstitutionFormatString rendering `{"error": {...}}`; `message` may hold Envoy command operators."""
    return {"json_format": {"error": {"message": message, "type": type_, "param": None, "code": code}}}


def _status(op: str, status: int) -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {"op": op, "value": {"default_value": status}}}}


def _mapper(filter_: dict[str, Any], message: str, type_: str, code: str) -> dict[str, Any]:
    return {"filter": filter_, "body_format_override": error_json(message, type_, code)}


_ANY_FLAG: dict[str, Any] = {"response_flag_filter": {}}
_NO_AUTHORITY: dict[str, Any] = {
    "header_filter": {"header": {"name": ":authority", "present_match": True, "invert_match": True}}
}


def local_reply_config(max_body_bytes: int) -> dict[str, Any]:
    invalid, unavailable = "invalid_request_error", "service_unavailable"
    mappers = [
        # The same message epp serve and epp gateway send for a body over the limit.
        _mapper(
            _status("EQ", 413), f"Request body exceeds {max_body_bytes} bytes.", invalid, "body_too_large"
        ),
        _mapper(_status("EQ", 431), "Request headers too large.", invalid, "headers_too_large"),
        _mapper(
            _status("EQ", 408),
            "The request was not received in time.",
            invalid,
            "request_timeout",
        ),
        _mapper(
            _status("EQ", EXTPROC_ERROR_STATUS),
            "The endpoint picker is unavailable.",
            unavailable,
            "endpoint_picker_unavailable",
        ),
        # Upstream failures (UF, UH, URX, UT, ...) before the ext_proc timeout: both can be 504.
        _mapper(
            {"and_filter": {"filters": [_status("GE", 500), _ANY_FLAG]}},
            "The inference gateway could not reach a model server.",
            unavailable,
            "upstream_unavailable",
        ),
        _mapper(
            _status("EQ", EXTPROC_TIMEOUT_STATUS),
            "The endpoint picker did not answer in time.",
            unavailable,
            "endpoint_picker_timeout",
        ),
        _mapper(_status("EQ", 501), "%LOCAL_REPLY_BODY%", invalid, "not_implemented"),
        # The codec's 400s (malformed request, HTTP/1.1 without Host) carry no flag; they have no Host
        # either (`:authority`), which every request reaching epp has.
        _mapper(
            {"and_filter": {"filters": [_status("EQ", 400), _NO_AUTHORITY]}},
            "Malformed HTTP request.",
            invalid,
            "invalid_request",
        ),
        _mapper(_status("EQ", 426), "HTTP/1.1 or later is required.", invalid, "upgrade_required"),
        # Anything else Envoy refuses itself: its own reason.
        _mapper(
            {"and_filter": {"filters": [_status("GE", 400), _ANY_FLAG]}},
            "%LOCAL_REPLY_BODY%",
            invalid,
            "invalid_request",
        ),
        # ext_proc's own 500 (an answer Envoy could not apply) has no flag; epp never answers 500.
        _mapper(_status("EQ", 500), "The endpoint picker failed.", unavailable, "endpoint_picker_error"),
    ]
    return {"mappers": mappers}


def not_found() -> dict[str, Any]:
    """A path outside the allow-list (the route never reaches epp or a pod)."""
    return {
        "status": 404,
        "body_format": error_json("Route %PATH(WQ)% not found.", "invalid_request_error", "not_found"),
    }


def method_not_allowed(allowed: list[str]) -> dict[str, Any]:
    """An allowed path with another method; the route adds `Allow`."""
    message = f"Method %REQ(:METHOD)% not allowed; use {', '.join(allowed)}."
    return {"status": 405, "body_format": error_json(message, "invalid_request_error", "method_not_allowed")}
