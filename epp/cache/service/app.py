"""The cache service's ASGI app: epp's protocol, ModelCache's API, the admin API, /metrics and /healthz.

    POST /v1/cache/lookup, POST /v1/cache/store   epp's protocol (epp.cache.service.protocol)
    POST /modelcache, GET /welcome                 ModelCache's API (epp.cache.service.modelcache)
    /v1/cache/entries...                           the admin API (epp.cache.service.admin), token-guarded
    GET /metrics                                   Prometheus: the cache's metrics (epp.cache.metrics)
    GET /healthz                                   200 {"status": "ok", "redis": "ok"} while Redis answers
                                                   a PING, else 503 {"status": "unavailable", "redis": why}
Any other path is a JSON 404, a wrong method a JSON 405.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from epp.cache.answers import storable_reason
from epp.cache.exact import PREFIX, redis_key
from epp.cache.metrics import CacheMetrics
from epp.cache.service.admin import AdminAPI
from epp.cache.service.http import (
    AdminGuard,
    BodyTooLarge,
    http_error,
    json_errors,
    json_response,
    read_body,
    read_json_object,
)
from epp.cache.service.modelcache import ModelCacheAPI
from epp.cache.service.protocol import (
    LOOKUP_PATH,
    STORE_PATH,
    ProtocolError,
    hit_json,
    parse_answer,
    parse_query,
)
from epp.cache.tiered import TieredCache
from epp.cache.types import HIT_EXACT, HIT_SEMANTIC, MISS, CacheQuery, CacheUnavailable

logger = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 1.0


def exact_entry_id(query: CacheQuery) -> str:
    """The exact tier's id of the entry a store of `query` writes."""
    return redis_key(query.model, query.key).removeprefix(PREFIX)


class CacheService:
    """The endpoints over one TieredCache; every dependency is passed in."""

    def __init__(
        self,
        cache: TieredCache,
        metrics: CacheMetrics,
        registry: CollectorRegistry,
        *,
        admin_token: str | None = None,
        semantic: bool = False,
        max_entry_bytes: int = 1 << 20,
    ) -> None:
        self.cache = cache
        self._metrics = metrics
        self._registry = registry
        self._guard = AdminGuard(admin_token)
        self._max_entry_bytes = max_entry_bytes
        self.modelcache = ModelCacheAPI(cache, semantic)
        self._admin = AdminAPI(cache)

    async def lookup(self, request: Request) -> Response:
        data = await read_json_object(request)
        query = parse_query(data.get("query"))
        _check_request(data)
        try:
            hit = await self.cache.lookup(query)
        except CacheUnavailable:
            self._metrics.error("lookup")
            raise
        if query.lookup:
            status = MISS if hit is None else (HIT_EXACT if hit.tier == "exact" else HIT_SEMANTIC)
            self._metrics.request(status)
            if hit is not None:
                self._metrics.time_saved(hit.answer.upstream_s)
        return json_response(hit_json(hit))

    async def store(self, request: Request) -> Response:
        data = await read_json_object(request)
        query = parse_query(data.get("query"))
        _check_request(data)
        answer = parse_answer(data.get("answer"))
        if answer.model != query.model:  # the exact tier files an answer under the query's model
            answer = dataclasses.replace(answer, model=query.model)
        reason = (
            "no_store" if not query.store else storable_reason(answer.body, query.kind, self._max_entry_bytes)
        )
        if reason is not None:
            self._metrics.stored("skipped", 0, reason)
            return json_response({"stored": False, "entry_id": None, "reason": reason})
        try:
            await self.cache.store(query, answer)
        except CacheUnavailable:
            self._metrics.error("store")
            raise
        self._metrics.stored("stored", len(answer.body))
        return json_response({"stored": True, "entry_id": exact_entry_id(query)})

    async def modelcache_post(self, request: Request) -> Response:
        try:
            body = await read_body(request)
        except BodyTooLarge:
            body = b""  # ModelCache's 101: not JSON
        return json_response(await self.modelcache.handle(body))

    async def healthz(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self.cache.exact.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            return json_response({"status": "unavailable", "redis": why}, 503)
        ms = round((time.perf_counter() - started) * 1000, 3)
        return json_response({"status": "ok", "redis": "ok", "redis_ping_ms": ms})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    def app(self) -> Starlette:
        admin = self._admin
        guard = self._guard
        routes = [
            Route(LOOKUP_PATH, json_errors(self.lookup), methods=["POST"]),
            Route(STORE_PATH, json_errors(self.store), methods=["POST"]),
            Route("/modelcache", json_errors(self.modelcache_post), methods=["POST"]),
            Route("/welcome", _welcome, methods=["GET"]),
            Route("/v1/cache/entries", guard(json_errors(admin.list_or_truncate)), methods=["GET", "DELETE"]),
            Route(
                "/v1/cache/entries/{entry_id:path}", guard(json_errors(admin.one)), methods=["GET", "DELETE"]
            ),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def _check_request(data: dict[str, object]) -> None:
    request = data.get("request")
    if request is not None and not isinstance(request, dict):
        raise ProtocolError("request: must be the request body (a JSON object) or null")


async def _welcome(request: Request) -> Response:
    return PlainTextResponse("hello, modelcache!")
