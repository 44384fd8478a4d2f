"""epp.cache.tiered: exact first, semantic only for semantic queries, stores to both, admin across tiers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from prometheus_client import CollectorRegistry

from epp.cache.exact import ExactTier, connect_redis
from epp.cache.lru import ByteLRU
from epp.cache.metrics import CacheMetrics
from epp.cache.policy import CachePolicy, decide
from epp.cache.tiered import TieredCache
from epp.cache.types import CacheHit, CacheQuery, CacheUnavailable, EntryInfo, ResponseCache, StoredAnswer
from tests.redis_support import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.slow


class FakeSemantic:
    """A SemanticStore that matches on the text only (enough to see the tiered cache route)."""

    def __init__(self) -> None:
        self.entries_: dict[str, tuple[CacheQuery, StoredAnswer]] = {}
        self.down = False
        self.closed = False

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        if self.down:
            raise CacheUnavailable("semantic down")
        for entry_id, (stored, answer) in self.entries_.items():
            if stored.partition == query.partition and stored.text.lower() == query.text.lower():
                return CacheHit(answer, "semantic", entry_id, 0.97)
        return None

    async def store(self, query: CacheQuery, answer: StoredAnswer) -> str:
        if self.down:
            raise CacheUnavailable("semantic down")
        entry_id = f"s{len(self.entries_)}"
        self.entries_[entry_id] = (query, answer)
        return entry_id

    async def delete(self, entry_id: str) -> bool:
        return self.entries_.pop(entry_id, None) is not None

    async def truncate(self, model: str) -> int:
        gone = [k for k, (q, _) in self.entries_.items() if q.model == model]
        for k in gone:
            del self.entries_[k]
        return len(gone)

    async def entries(self, model: str | None, limit: int) -> list[EntryInfo]:
        return [
            EntryInfo(k, "semantic", q.model, q.tenant, a.created_at, None, len(a.body), q.text)
            for k, (q, a) in self.entries_.items()
            if model is None or q.model == model
        ][:limit]

    async def load(self) -> int:
        return len(self.entries_)

    async def close(self) -> None:
        self.closed = True


def query(text: str, semantic: bool = True) -> CacheQuery:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    decision = decide(
        "/v1/chat/completions", {}, body, CachePolicy(semantic_models=("m",) if semantic else ())
    )
    assert isinstance(decision, CacheQuery)
    return decision


def answer(content: str) -> StoredAnswer:
    return StoredAnswer(orjson.dumps({"choices": [{"message": {"content": content}}]}), "m", time.time(), 2.0)


@pytest.fixture
async def cache(redis_server: RedisServer) -> AsyncIterator[tuple[TieredCache, FakeSemantic]]:  # noqa: F811
    metrics = CacheMetrics(CollectorRegistry())
    exact = ExactTier(connect_redis(redis_server.address), ByteLRU(1 << 20), 600, 2.0, metrics)
    semantic = FakeSemantic()
    tiered = TieredCache(exact, semantic, metrics)
    typed: ResponseCache = tiered  # it is a ResponseCache
    try:
        yield tiered, semantic
    finally:
        await typed.close()
        assert semantic.closed


async def test_exact_first_then_semantic(cache: tuple[TieredCache, FakeSemantic]) -> None:
    tiered, semantic = cache
    await tiered.store(query("What is Redis?"), answer("a store"))
    exact = await tiered.lookup(query("What is Redis?"))
    assert exact is not None and exact.tier == "exact" and exact.similarity is None
    paraphrase = await tiered.lookup(query("what is redis?"))
    assert paraphrase is not None and paraphrase.tier == "semantic" and paraphrase.similarity == 0.97
    assert await tiered.lookup(query("what is redis?", semantic=False)) is None  # exact only
    assert await tiered.lookup(dataclasses.replace(query("What is Redis?"), lookup=False)) is None
    await tiered.store(query("exact only", semantic=False), answer("x"))
    assert len(semantic.entries_) == 1
    await tiered.store(dataclasses.replace(query("not kept"), store=False), answer("x"))
    assert len(semantic.entries_) == 1 and await tiered.lookup(query("not kept")) is None


async def test_a_semantic_outage(cache: tuple[TieredCache, FakeSemantic]) -> None:
    tiered, semantic = cache
    semantic.down = True
    with pytest.raises(CacheUnavailable):
        await tiered.lookup(query("q"))
    with pytest.raises(CacheUnavailable):
        await tiered.store(query("q"), answer("a"))
    semantic.down = False
    hit = await tiered.lookup(query("q"))  # the exact tier kept it despite the semantic failure
    assert hit is not None and hit.tier == "exact"


async def test_admin_spans_both_tiers(cache: tuple[TieredCache, FakeSemantic]) -> None:
    tiered, _ = cache
    for text in ("a", "b"):
        await tiered.store(query(text), answer(text))
    listed = await tiered.entries("m", 100)
    assert sorted(e.tier for e in listed) == ["exact", "exact", "semantic", "semantic"]
    assert len(await tiered.entries(None, 3)) == 3
    exact_id = next(e.entry_id for e in listed if e.tier == "exact")
    found = await tiered.get(exact_id)
    assert found is not None and found[0].entry_id == exact_id
    assert await tiered.delete(exact_id) and await tiered.delete("s0") and not await tiered.delete("s0")
    assert await tiered.load() == 1
    assert await tiered.truncate("m") == 2
    assert await tiered.entries(None, 100) == []
