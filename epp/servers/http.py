"""epp's HTTP API (starlette, served by uvicorn): POST /pick, GET /metrics, /healthz, /readyz.

`POST /pick` lets a gateway that is not Envoy ask where a request should go. The body is the OpenAI request
itself; `?path=/v1/completions` (or header `x-epp-path`) says which API it is for, otherwise the body decides
(`messages` means chat). The prefix index learns from the pick, as the caller is expected to send the request
there. /pick does not count the request in flight: epp never sees it finish.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from epp.datastore import Datastore
from epp.picking import error_reply
from epp.request import RequestError
from epp.requestcontrol.director import Director
from epp.requestcontrol.lifecycle import RequestLifecycle
from epp.scheduling.types import SchedulingError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
PATH_HEADER = "x-epp-path"
JSON = "application/json"


class _BodyTooLarge(Exception):
    pass


def create_http_app(
    director: Director,
    datastore: Datastore,
    registry: CollectorRegistry,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    health: Callable[[], Mapping[str, object]] | None = None,
) -> Starlette:
    """The HTTP API over the director; `registry` is what GET /metrics exposes, `health` adds fields to
    /healthz (pod discovery's state)."""

    async def pick(request: Request) -> Response:
        try:
            body = await _read_body(request, max_body_bytes)
        except _BodyTooLarge:
            return _error(
                RequestError(413, f"Request body exceeds {max_body_bytes} bytes.", code="body_too_large")
            )
        if not body:
            return _error(RequestError(400, "Request body is empty.", code="invalid_body"))
        path = request.query_params.get("path") or request.headers.get(PATH_HEADER, "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            lifecycle = director.begin(body, headers, path)
        except (RequestError, SchedulingError) as exc:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("pick refused request_id=%s: %r", headers.get("x-request-id"), exc)
            return _error(exc)
        except Exception as exc:
            logger.exception("pick failed unexpectedly for request_id=%s", headers.get("x-request-id"))
            return _error(exc)
        lifecycle.hand_off()
        return _json(pick_json(lifecycle, director.strategy_name))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return _json({"status": "ok", **(health() if health is not None else {})})

    async def readyz(_: Request) -> Response:
        ready = len(datastore.schedulable())
        if ready:
            return Response(
                orjson.dumps({"status": "ready", "schedulable_endpoints": ready}), media_type=JSON
            )
        known = len(datastore.endpoints())
        reason = (
            "no endpoints configured"
            if not known
            else f"none of {known} endpoints has fresh metrics (staleness bound {datastore.staleness_s}s)"
        )
        return Response(
            orjson.dumps({"status": "not_ready", "reason": reason}), status_code=503, media_type=JSON
        )

    routes = [
        Route("/pick", pick, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def pick_json(lifecycle: RequestLifecycle, strategy: str) -> dict[str, Any]:
    """The /pick answer: where to send the request and the scores behind the choice."""
    result = lifecycle.result
    return {
        "endpoint": result.endpoint.address,
        "endpoint_name": result.endpoint.name,
        "profile": result.profile,
        "strategy": strategy,
        "prefix_match_ratio": result.prefix_match_ratio,
        "scores": result.scores,
        "total_scores": result.total_scores,
        "candidates": result.candidates_after_filters,
        "target_model": lifecycle.request.target_model,
        "rewritten": lifecycle.rewritten_body is not None,
    }


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(exc: Exception) -> Response:
    reply = error_reply(exc)
    return Response(reply.body, status_code=reply.status, media_type=JSON)


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)
