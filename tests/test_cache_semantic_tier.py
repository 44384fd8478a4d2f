"""The semantic tier on a real redis-server: hits by similarity, guards, isolation, TTL, admin, restarts."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from epp.cache.semantic import records
from epp.cache.semantic.index import PartitionIndexes
from epp.cache.semantic.tier import DEFAULT_THRESHOLD, RedisSemanticTier
from epp.cache.types import CacheQuery, CacheUnavailable, StoredAnswer
from tests.redis_support import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.slow
DIM = 16


def _unit(seed: str) -> np.ndarray:
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    v = rng.standard_normal(DIM).astype(np.float32)
    return np.asarray(v / np.linalg.norm(v), dtype=np.float32)


def _at_cosine(base: np.ndarray, cosine: float, seed: str) -> np.ndarray:
    z = _unit(seed)
    z -= (z @ base) * base
    z /= np.linalg.norm(z)
    return np.asarray(cosine * base + np.sqrt(1 - cosine**2) * z, dtype=np.float32)


class FakeEmbedder:
    """Texts listed in `vectors` get those; any other text a vector of its own (hash-seeded)."""

    dim = DIM
    name = "fake/v1"

    def __init__(self, vectors: dict[str, np.ndarray] | None = None) -> None:
        self.vectors = vectors or {}
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([self.vectors.get(t, _unit(t)) for t in texts]).astype(np.float32)

    def fits(self, text: str) -> bool:
        return len(text) <= 100


BASE = _unit("base")
VECTORS = {
    "how do I reset my password?": BASE,
    "how can I change my password?": _at_cosine(BASE, 0.92, "near"),
    "password reset steps": _at_cosine(BASE, 0.80, "far"),
}


def query(
    text: str, *, tenant: str = "t1", model: str = "m", partition: str = "p", **kw: object
) -> CacheQuery:
    return CacheQuery("chat", tenant, "", model, "k-" + text, partition, text, semantic=True, **kw)  # type: ignore[arg-type]


def answer(content: str) -> StoredAnswer:
    return StoredAnswer(f'{{"content":"{content}"}}'.encode(), "m", 1000.0, 2.5, "")


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    host, port = redis_server.address.split(":")
    redis = aioredis.Redis(host=host, port=int(port), socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        yield redis
    finally:
        await redis.aclose()


def make_tier(redis: aioredis.Redis, embedder: FakeEmbedder | None = None, **kw: object) -> RedisSemanticTier:
    return RedisSemanticTier(redis, embedder or FakeEmbedder(VECTORS), lambda a, b: True, **kw)  # type: ignore[arg-type]


async def test_store_then_hit_by_similarity(client: aioredis.Redis) -> None:
    tier = make_tier(client, threshold=0.85)
    entry_id = await tier.store(query("how do I reset my password?"), answer("a1"))
    assert records.ENTRY_ID.fullmatch(entry_id)
    same = await tier.lookup(query("how do I reset my password?"))
    assert same is not None and same.tier == "semantic" and same.entry_id == entry_id
    assert same.similarity == pytest.approx(1.0, abs=1e-5)
    assert same.answer.body == b'{"content":"a1"}'
    assert same.answer.upstream_s == 2.5 and same.answer.text == "how do I reset my password?"
    near = await tier.lookup(query("how can I change my password?"))
    assert near is not None and near.similarity == pytest.approx(0.92, abs=1e-4)
    assert await tier.lookup(query("password reset steps")) is None  # 0.80 < 0.85
    assert await tier.lookup(query("something else entirely")) is None
    await tier.close()


async def test_threshold_is_configurable(client: aioredis.Redis) -> None:
    tier = make_tier(client, threshold=0.75)
    await tier.store(query("how do I reset my password?"), answer("a1"))
    assert await tier.lookup(query("password reset steps")) is not None
    with pytest.raises(ValueError, match="threshold"):
        make_tier(client, threshold=1.5)


async def test_partition_tenant_and_model_isolation(client: aioredis.Redis) -> None:
    tier = make_tier(client)
    await tier.store(query("how do I reset my password?"), answer("a1"))
    assert await tier.lookup(query("how do I reset my password?", partition="other")) is None
    # a partition normally digests tenant and model; the tier checks them again all the same
    assert await tier.lookup(query("how do I reset my password?", tenant="t2")) is None
    assert await tier.lookup(query("how do I reset my password?", model="m2")) is None


async def test_guard_rejections_fall_through_to_the_next_candidate(client: aioredis.Redis) -> None:
    embedder = FakeEmbedder(VECTORS)
    seen: list[tuple[str, str]] = []

    def guard(q: str, candidate: str) -> bool:
        seen.append((q, candidate))
        return candidate != "how do I reset my password?"

    tier = RedisSemanticTier(client, embedder, guard, threshold=0.85)
    await tier.store(query("how do I reset my password?"), answer("exact"))
    assert await tier.lookup(query("how do I reset my password?")) is None  # the only candidate rejected
    await tier.store(query("how can I change my password?"), answer("near"))
    hit = await tier.lookup(query("how do I reset my password?"))
    assert hit is not None and hit.answer.body == b'{"content":"near"}'
    assert seen[-2:] == [
        ("how do I reset my password?", "how do I reset my password?"),
        ("how do I reset my password?", "how can I change my password?"),
    ]


async def test_vanished_entries_are_dropped_and_the_next_one_serves(client: aioredis.Redis) -> None:
    tier = make_tier(client)
    first = await tier.store(query("how do I reset my password?"), answer("first"))
    await tier.store(query("how can I change my password?"), answer("second"))
    await client.delete(records.redis_key("m", first))  # gone behind the index's back
    hit = await tier.lookup(query("how do I reset my password?"))
    assert hit is not None and hit.answer.body == b'{"content":"second"}'
    assert tier.indexes.partition_of(first) is None


async def test_ttl_and_max_age(client: aioredis.Redis) -> None:
    tier = make_tier(client)
    await tier.store(query("how do I reset my password?", ttl_s=0.2), answer("short"))
    assert 0 < await client.pttl(next(iter(await client.keys(records.PREFIX + "*")))) <= 200
    assert (
        await tier.lookup(query("how do I reset my password?", max_age_s=-1.0)) is None
    )  # stored too long ago
    assert await tier.lookup(query("how do I reset my password?")) is not None
    await asyncio.sleep(0.3)
    assert await tier.lookup(query("how do I reset my password?")) is None
    assert len(tier.indexes) == 0


async def test_texts_past_the_model_window_are_left_alone(client: aioredis.Redis) -> None:
    embedder = FakeEmbedder(VECTORS)
    tier = make_tier(client, embedder)
    long_text = "how do I reset my password? " * 10
    assert await tier.store(query(long_text), answer("long")) == ""
    assert await tier.lookup(query(long_text)) is None
    assert embedder.calls == 0
    assert await client.keys(records.PREFIX + "*") == []


async def test_the_store_reuses_the_lookups_embedding(client: aioredis.Redis) -> None:
    embedder = FakeEmbedder(VECTORS)
    tier = make_tier(client, embedder)
    assert await tier.lookup(query("how do I reset my password?")) is None
    await tier.store(query("how do I reset my password?"), answer("a1"))
    assert embedder.calls == 1


async def test_delete_truncate_and_entries(client: aioredis.Redis) -> None:
    tier = make_tier(client)
    keep = await tier.store(query("how do I reset my password?", model="m2"), answer("other model"))
    ids = [await tier.store(query(f"question {i}"), answer(str(i))) for i in range(3)]
    listed = await tier.entries("m", 10)
    assert {e.entry_id for e in listed} == set(ids)
    assert all(e.tier == "semantic" and e.tenant == "t1" and e.expires_at is not None for e in listed)
    assert listed[0].size_bytes > 4 * DIM
    assert len(await tier.entries(None, 2)) == 2
    assert len(await tier.entries(None, 10)) == 4
    assert await tier.delete(ids[0])
    assert not await tier.delete(ids[0])
    assert not await tier.delete("not-an-id")
    assert await tier.lookup(query("question 0")) is None
    assert await tier.truncate("m") == 2
    assert await tier.lookup(query("question 1")) is None
    assert await tier.entries("m", 10) == []
    assert await tier.lookup(query("how do I reset my password?", model="m2")) is not None
    # an id the indexes do not know (another instance stored it) is still found in Redis
    other = make_tier(client)
    assert await other.delete(keep)
    assert await client.keys(records.PREFIX + "*") == []


async def test_index_caps_evict_from_redis_too(client: aioredis.Redis) -> None:
    evicted: list[int] = []
    indexes: PartitionIndexes[records.EntryMeta] = PartitionIndexes(DIM, max_entries=2)
    tier = make_tier(client, indexes=indexes, on_evicted=evicted.append)
    first = await tier.store(query("q1"), answer("1"))
    await tier.store(query("q2"), answer("2"))
    await tier.store(query("q3"), answer("3"))
    assert evicted == [1]
    assert not await client.exists(records.redis_key("m", first))
    assert len(await tier.entries(None, 10)) == 2


async def test_a_growing_partition_gets_its_graph_off_the_loop(client: aioredis.Redis) -> None:
    indexes: PartitionIndexes[records.EntryMeta] = PartitionIndexes(DIM, hnsw_from=8, convert_inline=False)
    tier = make_tier(client, indexes=indexes)
    for i in range(8):
        await tier.store(query(f"q{i}"), answer(str(i)))
    await tier.store(query("how do I reset my password?"), answer("while building"))  # brute force still
    await tier.settle()
    part = indexes.get("p")
    assert part is not None and part.is_hnsw and len(part) == 9
    hit = await tier.lookup(query("how can I change my password?"))
    assert hit is not None and hit.answer.body == b'{"content":"while building"}'
    assert (await tier.lookup(query("q3"))) is not None


async def test_similarity_hook_sees_misses_too(client: aioredis.Redis) -> None:
    seen: list[float] = []
    tier = make_tier(client, on_similarity=seen.append)
    await tier.store(query("how do I reset my password?"), answer("a1"))
    await tier.lookup(query("password reset steps"))
    assert seen == [pytest.approx(0.80, abs=1e-4)]


async def test_restart_load_and_hit_again(redis_server: RedisServer, client: aioredis.Redis) -> None:  # noqa: F811
    tier = make_tier(client)
    stored = await tier.store(query("how do I reset my password?"), answer("persisted"))
    await client.hset(records.redis_key("m", "f" * 32), mapping={"partition": "p", "vector": b"bad"})
    redis_server.restart()
    await client.connection_pool.disconnect()
    fresh = make_tier(client)
    assert await fresh.lookup(query("how can I change my password?")) is None  # nothing indexed yet
    assert await fresh.load() == 1  # the malformed hash is skipped
    hit = await fresh.lookup(query("how can I change my password?"))
    assert hit is not None and hit.entry_id == stored and hit.answer.body == b'{"content":"persisted"}'
    other_space = RedisSemanticTier(
        client, type("E", (FakeEmbedder,), {"name": "fake/v2"})(VECTORS), lambda a, b: True
    )
    assert await other_space.load() == 0  # vectors of another embedder are not mixed in


async def test_stores_during_load_are_kept(client: aioredis.Redis) -> None:
    tier = make_tier(client)
    for i in range(50):
        await tier.store(query(f"old {i}"), answer(str(i)))
    loading = asyncio.create_task(tier.load())
    await asyncio.sleep(0)
    new = await tier.store(query("stored while loading"), answer("new"))
    assert await loading >= 50
    assert tier.indexes.partition_of(new) == "p"
    assert await tier.lookup(query("stored while loading")) is not None


async def test_redis_down_is_cache_unavailable(redis_server: RedisServer, client: aioredis.Redis) -> None:  # noqa: F811
    tier = make_tier(client, op_timeout_s=0.3)
    await tier.store(query("how do I reset my password?"), answer("a1"))
    redis_server.stop()
    with pytest.raises(CacheUnavailable):
        await tier.lookup(query("how do I reset my password?"))
    with pytest.raises(CacheUnavailable):
        await tier.store(query("q"), answer("x"))
    with pytest.raises(CacheUnavailable):
        await tier.load()
    assert await tier.lookup(query("no candidate at all")) is None  # nothing to fetch: a plain miss


async def test_real_embedder_paraphrase_hits(client: aioredis.Redis, tmp_path: Path) -> None:
    from epp.cache.semantic.embedder import load_embedder

    tier = RedisSemanticTier(client, load_embedder("minilm-int8", tmp_path), lambda a, b: True, threshold=0.8)
    await tier.store(query("What is the capital of France?"), answer("Paris"))
    hit = await tier.lookup(query("Which city is the capital of France?"))
    assert hit is not None and hit.answer.body == b'{"content":"Paris"}'
    assert await tier.lookup(query("How do I bake sourdough bread?")) is None
    await tier.close()


async def test_the_factory_builds_the_int8_model_and_the_guards(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry

    from epp.cache.metrics import CacheMetrics
    from epp.cache.semantic.guards import compatible
    from epp.cache.semantic.tier import semantic_tier_from

    metrics = CacheMetrics(CollectorRegistry())
    tier = semantic_tier_from(client, metrics, None, default_ttl_s=30, model_dir=tmp_path)
    assert tier.threshold == DEFAULT_THRESHOLD and tier.default_ttl_s == 30 and tier.guard is compatible
    assert tier.embedder.name == "all-MiniLM-L6-v2/int8"
    assert any(name.endswith("-int8.onnx") for name in os.listdir(tmp_path))
    await tier.store(query("What is the capital of France?"), answer("Paris"))
    assert (
        metrics.registry.get_sample_value("epp_cache_stored_bytes", {"tier": "semantic"}) == tier.memory_bytes
    )
    assert semantic_tier_from(client, metrics, 0.9, model_dir=tmp_path).threshold == 0.9
    await tier.close()
