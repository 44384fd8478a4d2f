"""Helpers for the cache service's tests: the service in-process on a free port, queries, answers, and an
in-memory SemanticStore (the tests of the service are about the HTTP APIs, not about embeddings)."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from epp.cache.metrics import CacheMetrics
from epp.cache.policy import CachePolicy, decide
from epp.cache.service.app import CacheService
from epp.cache.service.build import build_tiered
from epp.cache.tiered import TieredCache
from epp.cache.types import CacheHit, CacheQuery, EntryInfo, StoredAnswer
from epp.config.cache import CacheSettings, RedisSettings
from epp.embedded_http import EmbeddedServer


def chat_query(
    text: str = "What is Redis?", api_key: str = "sk-a", model: str = "m", **extra: Any
) -> CacheQuery:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    decision = decide("/v1/chat/completions", {"authorization": f"Bearer {api_key}"}, body, CachePolicy())
    assert isinstance(decision, CacheQuery)
    return dataclasses.replace(decision, **extra)


def completion(
    content: str = "An in-memory store.", model: str = "m", finish: str = "stop"
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def stored(content: str = "An in-memory store.", model: str = "m", text: str = "") -> StoredAnswer:
    return StoredAnswer(orjson.dumps(completion(content, model)), model, time.time(), 1.25, text)


@dataclass
class FakeSemantic:
    """A SemanticStore that matches the same partition and the same text up to case and spaces."""

    entries_by_id: dict[str, tuple[CacheQuery, StoredAnswer]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        for entry_id, (q, answer) in self.entries_by_id.items():
            if (q.tenant, q.partition, _fold(q.text)) == (query.tenant, query.partition, _fold(query.text)):
                return CacheHit(answer, "semantic", entry_id, 0.97)
        return None

    async def store(self, query: CacheQuery, answer: StoredAnswer) -> str:
        entry_id = f"sem-{next(self.ids)}"
        self.entries_by_id[entry_id] = (query, answer)
        return entry_id

    async def delete(self, entry_id: str) -> bool:
        return self.entries_by_id.pop(entry_id, None) is not None

    async def truncate(self, model: str) -> int:
        doomed = [i for i, (q, _) in self.entries_by_id.items() if q.model == model]
        for entry_id in doomed:
            del self.entries_by_id[entry_id]
        return len(doomed)

    async def entries(self, model: str | None, limit: int) -> list[EntryInfo]:
        return [
            EntryInfo(i, "semantic", q.model, q.tenant, a.created_at, None, len(a.body), q.text)
            for i, (q, a) in self.entries_by_id.items()
            if model is None or q.model == model
        ][:limit]

    async def load(self) -> int:
        return len(self.entries_by_id)

    async def close(self) -> None:
        pass


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass
class RunningService:
    url: str
    service: CacheService
    cache: TieredCache
    registry: CollectorRegistry


def settings_for(address: str, password: str = "", **changes: Any) -> CacheSettings:
    from pydantic import SecretStr

    return CacheSettings(redis=RedisSettings(address, SecretStr(password), 600), **changes)


@asynccontextmanager
async def running_service(
    settings: CacheSettings,
    *,
    token: str | None = None,
    semantic: FakeSemantic | None = None,
    real_semantic: bool = False,
) -> AsyncIterator[RunningService]:
    """The service on a free port; `semantic`: a fake semantic tier, `real_semantic`: epp's own."""
    registry = CollectorRegistry()
    metrics = CacheMetrics(registry)
    on = semantic is not None or real_semantic
    cache = build_tiered(
        settings,
        metrics,
        semantic=on,
        semantic_factory=(lambda _r, _m, _t, _ttl, _op: semantic) if semantic is not None else None,
        op_timeout_s=1.0,
    )
    await cache.load()
    service = CacheService(cache, metrics, registry, admin_token=token, semantic=on)
    server = EmbeddedServer(service.app(), "127.0.0.1", 0, "WARNING", "cache")
    port = await server.start()
    try:
        yield RunningService(f"http://127.0.0.1:{port}", service, cache, registry)
    finally:
        await server.stop()
        await cache.close()


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
