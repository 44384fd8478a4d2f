"""The exact tier: an in-process byte-bounded LRU in front of Redis.

Redis key `epp:cache:v1:{model_digest}:{key}` (so one model's entries are found by SCAN), value orjson
`{"answer": <the answer JSON as text>, "model", "created_at", "upstream_s", "text", "tenant"}`, written with
SET PX (the TTL); the admin entry id is `{model_digest}:{key}`. Redis AOF keeps entries across restarts.
Any Redis error or timeout is CacheUnavailable: the stage decides what an outage means.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from epp.cache.key import model_digest
from epp.cache.lru import ByteLRU
from epp.cache.metrics import CacheMetrics
from epp.cache.types import CacheHit, CacheQuery, CacheUnavailable, EntryInfo, StoredAnswer

PREFIX = "epp:cache:v1:"
ENTRY_ID = re.compile(r"[0-9a-f]{16}:[0-9a-f]{64}")
LRU_OVERHEAD_BYTES = 200  # per entry: the key, the objects around the answer
SCAN_COUNT = 500
T = TypeVar("T")


def redis_key(model: str, key: str) -> str:
    return f"{PREFIX}{model_digest(model)}:{key}"


def connect_redis(address: str, password: str = "", timeout_s: float = 0.5) -> aioredis.Redis:
    """A client for `address` ("host:port", "[v6]:port", or a redis://, rediss://, unix:// URL).

    One quick retry (a pooled connection broken by a Redis restart reconnects), no backoff, short socket
    timeouts: an outage fails fast. The password is only handed to redis-py, which never prints it.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1),
        "password": password or None,
    }
    if "://" in address:
        return aioredis.Redis.from_url(address, **options)
    host, port = parse_address(address)
    return aioredis.Redis(host=host, port=port, **options)


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (port 6379 when omitted; IPv6 in brackets) -> (host, port); ValueError otherwise."""
    parts = urlsplit("//" + address.strip())
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad Redis address {address!r}: want host:port") from None
    if not parts.hostname or parts.path or parts.username is not None:
        raise ValueError(f"bad Redis address {address!r}: want host:port")
    return parts.hostname, port


class ExactTier:
    def __init__(
        self,
        redis: aioredis.Redis,
        lru: ByteLRU[StoredAnswer] | None,
        default_ttl_s: float,
        op_timeout_s: float,
        metrics: CacheMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.lru = lru
        self.default_ttl_s = default_ttl_s
        self.op_timeout_s = op_timeout_s
        self._metrics = metrics
        self._clock = clock
        if metrics is not None and lru is not None:
            metrics.track_bytes("exact", lambda: lru.bytes)

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        if not query.lookup:
            return None
        started = time.perf_counter()
        rkey = redis_key(query.model, query.key)
        entry_id = rkey.removeprefix(PREFIX)
        if self.lru is not None:
            answer = self.lru.get(rkey)
            if answer is not None and self._fresh(answer, query):
                self._count("hit", started)
                return CacheHit(answer, "exact", entry_id)
        try:
            raw, pttl = await self._call(self._get(rkey))
        except CacheUnavailable:
            self._count("error", started)
            raise
        answer, tenant = _decode(raw) if raw is not None else (None, "")
        if answer is None or tenant != query.tenant or answer.model != query.model:
            self._count("miss", started)  # a value of another tenant or model would be a digest collision
            return None
        if self.lru is not None and pttl != -2:
            self.lru.put(rkey, answer, _lru_size(answer), pttl / 1000 if pttl > 0 else None)
        if not self._fresh(answer, query):
            self._count("miss", started)
            return None
        self._count("hit", started)
        return CacheHit(answer, "exact", entry_id)

    async def store(self, query: CacheQuery, answer: StoredAnswer) -> str:
        """Keep `answer` for the query's TTL (its own `cache.ttl`, else the default); returns the entry id."""
        ttl_s = query.ttl_s if query.ttl_s is not None else self.default_ttl_s
        rkey = redis_key(query.model, query.key)
        value = orjson.dumps(
            {
                "answer": answer.body.decode("utf-8"),
                "model": answer.model,
                "created_at": answer.created_at,
                "upstream_s": answer.upstream_s,
                "text": answer.text,
                "tenant": query.tenant,
            }
        )
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        await self._call(self.redis.set(rkey, value, px=ttl_ms), "store")
        if self.lru is not None:
            self.lru.put(rkey, answer, _lru_size(answer), ttl_s)
        return rkey.removeprefix(PREFIX)

    async def get(self, entry_id: str) -> tuple[EntryInfo, StoredAnswer] | None:
        if not ENTRY_ID.fullmatch(entry_id):
            return None
        raw, pttl = await self._call(self._get(PREFIX + entry_id), "admin")
        return self._info(entry_id, raw, pttl) if raw is not None else None

    async def delete(self, entry_id: str) -> bool:
        if not ENTRY_ID.fullmatch(entry_id):
            return False
        if self.lru is not None:
            self.lru.delete(PREFIX + entry_id)
        removed = await self._call(self.redis.unlink(PREFIX + entry_id), "admin")
        return bool(removed)

    async def entries(self, model: str | None, limit: int) -> list[EntryInfo]:
        """Up to `limit` entries (of `model`, or all), in Redis's SCAN order."""
        keys: list[bytes] = []
        async with self._guard("admin"):
            async for rkey in self.redis.scan_iter(match=self._pattern(model), count=SCAN_COUNT):
                if len(keys) >= limit:
                    break
                keys.append(rkey)
            pipe = self.redis.pipeline(transaction=False)
            for rkey in keys:
                pipe.get(rkey)
                pipe.pttl(rkey)
            replies = await pipe.execute() if keys else []
        out = []
        for i, rkey in enumerate(keys):
            raw, pttl = replies[2 * i], replies[2 * i + 1]
            found = self._info(rkey.decode().removeprefix(PREFIX), raw, pttl) if raw is not None else None
            if found is not None and (model is None or found[0].model == model):
                out.append(found[0])
        return out

    async def truncate(self, model: str) -> int:
        """Delete every entry of `model`; returns how many."""
        prefix = f"{PREFIX}{model_digest(model)}:"
        if self.lru is not None:
            self.lru.remove_where(lambda k: k.startswith(prefix))
        removed = 0
        async with self._guard("admin"):
            batch: list[bytes] = []
            async for rkey in self.redis.scan_iter(match=prefix + "*", count=SCAN_COUNT):
                batch.append(rkey)
                if len(batch) >= SCAN_COUNT:
                    removed += await self.redis.unlink(*batch)
                    batch = []
            if batch:
                removed += await self.redis.unlink(*batch)
        return removed

    async def close(self) -> None:
        await self.redis.aclose()

    def _fresh(self, answer: StoredAnswer, query: CacheQuery) -> bool:
        return query.max_age_s is None or self._clock() - answer.created_at <= query.max_age_s

    async def _get(self, rkey: str) -> tuple[bytes | None, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(rkey)
        pipe.pttl(rkey)
        raw, pttl = await pipe.execute()
        return raw, int(pttl)

    async def _call(self, op: Awaitable[T], operation: str = "lookup") -> T:
        async with self._guard(operation):
            return await op

    @asynccontextmanager
    async def _guard(self, operation: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.op_timeout_s):
                yield
        except (RedisError, OSError, TimeoutError) as exc:
            if self._metrics is not None:
                self._metrics.backend_error("exact", operation)
            why = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise CacheUnavailable(f"redis {operation}: {why}") from exc

    def _info(self, entry_id: str, raw: bytes, pttl: int) -> tuple[EntryInfo, StoredAnswer] | None:
        answer, tenant = _decode(raw)
        if answer is None:
            return None
        expires_at = self._clock() + pttl / 1000 if pttl > 0 else None
        info = EntryInfo(
            entry_id, "exact", answer.model, tenant, answer.created_at, expires_at, len(raw), answer.text
        )
        return info, answer

    @staticmethod
    def _pattern(model: str | None) -> str:
        return f"{PREFIX}{model_digest(model)}:*" if model is not None else PREFIX + "*"

    def _count(self, result: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.lookup("exact", result, time.perf_counter() - started)


def _decode(raw: bytes) -> tuple[StoredAnswer | None, str]:
    """The stored answer and its tenant; (None, "") for a value this version cannot read."""
    try:
        value = orjson.loads(raw)
        answer = StoredAnswer(
            body=value["answer"].encode("utf-8"),
            model=value["model"],
            created_at=float(value["created_at"]),
            upstream_s=float(value["upstream_s"]),
            text=value.get("text", ""),
        )
        return answer, str(value["tenant"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None, ""


def _lru_size(answer: StoredAnswer) -> int:
    return len(answer.body) + len(answer.text) + LRU_OVERHEAD_BYTES
