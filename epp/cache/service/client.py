"""HttpCacheClient: a ResponseCache over epp's cache-service protocol (epp.cache.service.protocol).

Every failure is CacheUnavailable, and quickly: `timeout_s` bounds the whole call (connecting, sending,
waiting, reading), so with FAIL_OPEN an unreachable or slow service costs a request at most that. A 4xx is
CacheUnavailable too (the stage must never fail a request because the service disagrees with a query); its
message says what the service objected to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from epp.cache.service.protocol import (
    LOOKUP_PATH,
    STORE_PATH,
    ProtocolError,
    answer_json,
    parse_hit,
    query_json,
)
from epp.cache.types import CacheHit, CacheQuery, CacheUnavailable, StoredAnswer

MAX_CONNECTIONS = 256
JSON_HEADERS = {"content-type": "application/json"}


class HttpCacheClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        session: aiohttp.ClientSession | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """`session`: a shared aiohttp session (left open); None: the client opens and closes its own, which
        resolves hosts with `resolver` (e.g. epp.traffic.resolve.OverrideResolver for `--resolve`)."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"cache service URL must start with http:// or https:// (got {base_url!r})")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = session
        self._owns_session = session is None
        self._resolver = resolver

    def __repr__(self) -> str:
        return f"HttpCacheClient({self.base_url!r}, timeout_s={self.timeout_s})"

    async def lookup(self, query: CacheQuery, request: Mapping[str, Any] | None = None) -> CacheHit | None:
        """The service's hit for `query`; `request` (the request body) is sent for a replacement service."""
        if not query.lookup:
            return None
        reply = await self._post(LOOKUP_PATH, {"query": query_json(query), "request": request})
        try:
            return parse_hit(reply)
        except ProtocolError as exc:
            raise CacheUnavailable(f"cache service {self.base_url}: bad lookup reply: {exc}") from None

    async def store(
        self, query: CacheQuery, answer: StoredAnswer, request: Mapping[str, Any] | None = None
    ) -> None:
        if not query.store:
            return
        payload = {"query": query_json(query), "request": request, "answer": answer_json(answer)}
        await self._post(STORE_PATH, payload)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ttl_dns_cache=30, resolver=self._resolver)
            self._session = aiohttp.ClientSession(connector=connector)
            self._owns_session = True
        return self._session

    async def _post(self, path: str, payload: dict[str, Any]) -> Any:
        url = self.base_url + path
        try:
            body = orjson.dumps(payload)
            async with asyncio.timeout(self.timeout_s):
                async with self._client().post(url, data=body, headers=JSON_HEADERS) as response:
                    raw = await response.read()
                    status = response.status
        except TimeoutError:
            raise CacheUnavailable(
                f"cache service {url}: no answer within {self.timeout_s * 1000:g} ms"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise CacheUnavailable(f"cache service {url}: {type(exc).__name__}: {exc}") from None
        if status != 200:
            raise CacheUnavailable(f"cache service {url}: HTTP {status}: {_message(raw)}")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CacheUnavailable(f"cache service {url}: the reply is not JSON") from None


def _message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
        message = data["error"]["message"]
        return str(message)[:300]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace")
