"""HTTP plumbing shared by the cache service's endpoints: bounded JSON bodies, JSON answers, JSON errors."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from epp.cache.service.protocol import MAX_BODY_BYTES, ProtocolError, error_json
from epp.cache.types import CacheUnavailable

logger = logging.getLogger(__name__)
JSON = "application/json"
Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(Exception):
    pass


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type=JSON)


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    kind = "invalid_request_error" if status < 500 else "api_error"
    return Response(error_json(message, kind, code), status, headers, media_type=JSON)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, or BodyTooLarge past `limit` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


async def read_json_object(request: Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await read_body(request))
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ProtocolError("body: must be a JSON object")
    return data


def json_errors(handler: Handler) -> Handler:
    """Every failure as a JSON error: 400 bad input, 413 too large, 503 cache outage, 500 a bug (logged)."""

    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ProtocolError as exc:
            return error_response(400, str(exc), "invalid_request")
        except BodyTooLarge:
            return error_response(413, f"body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")
        except CacheUnavailable as exc:
            logger.warning("%s %s: cache unavailable: %s", request.method, request.url.path, exc)
            return error_response(503, f"the cache is unavailable: {exc}", "cache_unavailable")
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(500, "internal error", "internal_error")

    return wrapped


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as JSON errors."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, str(exc.detail), code, dict(exc.headers or {}))


class AdminGuard:
    """`Authorization: Bearer <token>` on the admin endpoints when a token is configured (never logged)."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def __repr__(self) -> str:
        return f"AdminGuard(token={'set' if self._token else 'none'})"

    def __call__(self, handler: Handler) -> Handler:
        @wraps(handler)
        async def guarded(request: Request) -> Response:
            if self._token is not None:
                scheme, _, given = request.headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
                    return error_response(
                        401, "admin token missing or wrong", "unauthorized", {"www-authenticate": "Bearer"}
                    )
            return await handler(request)

        return guarded
