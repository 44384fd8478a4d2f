"""epp.cache.exact on a real redis-server: store/lookup, LRU, TTL, restart (AOF), outage, tenants, admin."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from epp.cache.exact import PREFIX, ExactTier, connect_redis, parse_address, redis_key
from epp.cache.key import model_digest
from epp.cache.lru import ByteLRU
from epp.cache.metrics import CacheMetrics
from epp.cache.policy import CachePolicy, decide
from epp.cache.types import CacheQuery, CacheUnavailable, StoredAnswer
from tests.redis_support import RedisServer, redis_server  # noqa: F401
from tests.test_serve_support import free_port

pytestmark = pytest.mark.slow


def make_query(text: str = "hi", key: str = "k", model: str = "m", **extra: Any) -> CacheQuery:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    decision = decide("/v1/chat/completions", {"authorization": key}, body, CachePolicy())
    assert isinstance(decision, CacheQuery)
    return dataclasses.replace(decision, **extra)


def make_answer(content: str = "hello", model: str = "m", created_at: float | None = None) -> StoredAnswer:
    body = {"object": "chat.completion", "model": model, "choices": [{"message": {"content": content}}]}
    stamp = time.time() if created_at is None else created_at
    return StoredAnswer(orjson.dumps(body), model, stamp, 1.5, "hi")


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == name
    }


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def tier(redis_server: RedisServer, registry: CollectorRegistry) -> AsyncIterator[ExactTier]:  # noqa: F811
    exact = ExactTier(
        connect_redis(redis_server.address, timeout_s=1.0),
        ByteLRU(1 << 20),
        default_ttl_s=600,
        op_timeout_s=1.0,
        metrics=CacheMetrics(registry),
    )
    try:
        yield exact
    finally:
        await exact.close()


async def test_store_then_lookup_from_redis_and_from_the_lru(
    tier: ExactTier, registry: CollectorRegistry
) -> None:
    query = make_query()
    assert await tier.lookup(query) is None
    entry_id = await tier.store(query, make_answer())
    assert entry_id == f"{model_digest('m')}:{query.key}"
    hit = await tier.lookup(query)
    assert hit is not None and hit.tier == "exact" and hit.entry_id == entry_id
    assert hit.answer == make_answer(created_at=hit.answer.created_at)
    assert tier.lru is not None
    tier.lru.clear()  # the next lookup goes to Redis, and fills the LRU again
    from_redis = await tier.lookup(query)
    assert from_redis is not None and from_redis.answer.body == make_answer().body
    assert len(tier.lru) == 1
    value = orjson.loads(await tier.redis.get(PREFIX + entry_id) or b"")
    assert value["tenant"] == query.tenant and value["model"] == "m" and "k" not in value["tenant"]
    lookups = samples(registry, "epp_cache_lookups_total")
    assert lookups[(("result", "hit"), ("tier", "exact"))] == 2
    assert lookups[(("result", "miss"), ("tier", "exact"))] == 1
    assert samples(registry, "epp_cache_stored_bytes")[(("tier", "exact"),)] > 0


async def test_tenants_never_share_an_entry(tier: ExactTier) -> None:
    alice, bob = make_query(key="Bearer alice"), make_query(key="Bearer bob")
    assert alice.key != bob.key and alice.tenant != bob.tenant
    await tier.store(alice, make_answer("for alice"))
    assert await tier.lookup(bob) is None
    # Even a forged query with alice's key but bob's tenant finds nothing: the value names its tenant.
    forged = dataclasses.replace(alice, tenant=bob.tenant)
    assert tier.lru is not None
    tier.lru.clear()
    assert await tier.lookup(forged) is None
    assert await tier.lookup(alice) is not None


async def test_ttl_expiry(tier: ExactTier) -> None:
    query = make_query(ttl_s=1.0)
    await tier.store(query, make_answer())
    assert await tier.lookup(query) is not None
    deadline = time.monotonic() + 30
    while await tier.lookup(query) is not None:  # both the LRU and Redis forget it
        assert time.monotonic() < deadline, "the entry never expired"
        await asyncio.sleep(0.1)
    assert await tier.redis.exists(redis_key("m", query.key)) == 0


async def test_default_ttl_and_max_age(tier: ExactTier) -> None:
    query = make_query()
    await tier.store(query, make_answer(created_at=time.time() - 100))
    pttl = await tier.redis.pttl(redis_key("m", query.key))
    assert 590_000 < pttl <= 600_000
    assert await tier.lookup(make_query(max_age_s=1000)) is not None
    assert await tier.lookup(make_query(max_age_s=10)) is None  # stored too long ago for this client
    assert await tier.lookup(make_query(lookup=False)) is None


async def test_entries_survive_a_redis_restart(redis_server: RedisServer) -> None:  # noqa: F811
    exact = ExactTier(connect_redis(redis_server.address), None, 600, 2.0)
    query = make_query()
    await exact.store(query, make_answer("persisted"))
    redis_server.restart()
    hit = await exact.lookup(query)  # the same client: its pooled connection reconnects
    assert hit is not None and b"persisted" in hit.answer.body
    await exact.close()


async def test_redis_down_is_cache_unavailable(redis_server: RedisServer) -> None:  # noqa: F811
    registry = CollectorRegistry()
    exact = ExactTier(connect_redis(redis_server.address), ByteLRU(1 << 20), 600, 5.0, CacheMetrics(registry))
    stored = make_query("stored")
    await exact.store(stored, make_answer())
    redis_server.stop()
    async with asyncio.timeout(5):  # a refused connection fails at once, well inside the op timeout
        with pytest.raises(CacheUnavailable):
            await exact.lookup(make_query("other"))
        with pytest.raises(CacheUnavailable):
            await exact.store(make_query("other"), make_answer())
        with pytest.raises(CacheUnavailable):
            await exact.entries(None, 10)
    assert await exact.lookup(stored) is not None  # the LRU still answers
    errors = samples(registry, "epp_cache_backend_errors_total")
    assert errors[(("operation", "lookup"), ("tier", "exact"))] == 1
    assert errors[(("operation", "store"), ("tier", "exact"))] == 1
    assert samples(registry, "epp_cache_lookups_total")[(("result", "error"), ("tier", "exact"))] == 1
    await exact.close()


async def test_a_silent_redis_times_out() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    exact = ExactTier(connect_redis(f"127.0.0.1:{port}", timeout_s=5.0), None, 600, 0.2)
    with pytest.raises(CacheUnavailable, match="timed out"):
        await exact.lookup(make_query())
    await exact.close()
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_admin_get_delete_entries_truncate(tier: ExactTier) -> None:
    ids = {}
    for model in ("m", "m2"):
        for i in range(3):
            query = make_query(f"q{i}", model=model)
            ids[model, i] = await tier.store(query, make_answer(f"a{i}", model=model))
    found = await tier.get(ids["m", 0])
    assert found is not None
    info, answer = found
    assert (info.tier, info.model, info.entry_id, info.text) == ("exact", "m", ids["m", 0], "hi")
    assert info.expires_at is not None and info.expires_at > time.time() + 500 and info.size_bytes > 0
    assert b"a0" in answer.body
    assert await tier.get("nonsense") is None and await tier.get("0" * 16 + ":" + "0" * 64) is None
    assert {e.entry_id for e in await tier.entries("m", 100)} == {ids["m", i] for i in range(3)}
    assert len(await tier.entries(None, 100)) == 6 and len(await tier.entries(None, 2)) == 2
    assert await tier.delete(ids["m", 0]) and not await tier.delete(ids["m", 0])
    assert await tier.lookup(make_query("q0")) is None  # gone from the LRU too
    assert await tier.truncate("m2") == 3
    assert await tier.entries("m2", 100) == []
    assert await tier.lookup(make_query("q1", model="m2")) is None
    assert len(await tier.entries(None, 100)) == 2


async def test_a_password_protected_redis(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "r", password="s3cret-pw")
    server.folder.mkdir()
    server.start()
    try:
        client = connect_redis(server.address, "s3cret-pw")
        assert "s3cret-pw" not in repr(client) and "s3cret-pw" not in repr(client.connection_pool)
        exact = ExactTier(client, None, 600, 2.0)
        await exact.store(make_query(), make_answer())
        assert await exact.lookup(make_query()) is not None
        await exact.close()
        wrong = ExactTier(connect_redis(server.address, "wrong"), None, 600, 2.0)
        with pytest.raises(CacheUnavailable) as err:
            await wrong.lookup(make_query())
        assert "s3cret-pw" not in str(err.value) and "wrong" not in str(err.value)
        await wrong.close()
        url = ExactTier(connect_redis(f"redis://:s3cret-pw@{server.address}/0"), None, 600, 2.0)
        assert await url.lookup(make_query()) is not None
        await url.close()
    finally:
        server.stop()


def test_parse_address() -> None:
    assert parse_address("redis:6379") == ("redis", 6379)
    assert parse_address("10.0.0.1") == ("10.0.0.1", 6379)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    for bad in ("", "host:port", "host:1:2", "a/b", "u@host:1"):
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_the_latency_benchmark_runs() -> None:
    from bench.cache_exact_latency import run

    results = await run(requests=50, entries=20, answer_bytes=100)
    assert set(results) == {"lru-hit", "redis-hit", "miss", "decide+redis-hit"}
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in results.values())
