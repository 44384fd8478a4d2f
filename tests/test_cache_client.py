"""HttpCacheClient: a ResponseCache over the cache-service protocol; every failure is CacheUnavailable."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from epp.cache.service.client import HttpCacheClient
from epp.cache.types import CacheQuery, CacheUnavailable, ResponseCache
from epp.embedded_http import EmbeddedServer
from epp.traffic.resolve import Address, OverrideResolver
from tests.redis_support import RedisServer, redis_server  # noqa: F401
from tests.test_cache_service_support import chat_query, running_service, settings_for, stored
from tests.test_serve_support import free_port

TIMEOUT_S = 0.3


@pytest.mark.slow
async def test_round_trip_through_the_service(redis_server: RedisServer) -> None:  # noqa: F811
    async with running_service(settings_for(redis_server.address)) as svc:
        client: ResponseCache = HttpCacheClient(svc.url, timeout_s=5)
        try:
            mine = chat_query(api_key="sk-a")
            assert await client.lookup(mine) is None
            answer = stored(text=mine.text)
            await client.store(mine, answer)
            hit = await client.lookup(mine)
            assert hit is not None and hit.tier == "exact" and hit.similarity is None
            assert hit.answer == answer  # body bytes, model, created_at, upstream_s and text survive the trip
            assert await client.lookup(chat_query(api_key="sk-b")) is None
            other_model = chat_query(model="m2")
            await client.store(other_model, stored(model="m2"))
            assert (await client.lookup(other_model)) is not None
        finally:
            await client.close()


@pytest.mark.slow
async def test_redis_down_is_cache_unavailable(redis_server: RedisServer) -> None:  # noqa: F811
    async with running_service(settings_for(redis_server.address)) as svc:
        client = HttpCacheClient(svc.url, timeout_s=5)
        try:
            redis_server.stop()
            with pytest.raises(CacheUnavailable, match="HTTP 503: the cache is unavailable"):
                await client.lookup(chat_query())
            with pytest.raises(CacheUnavailable, match="HTTP 503"):
                await client.store(chat_query(), stored())
        finally:
            await client.close()


async def test_nothing_listening_is_cache_unavailable() -> None:
    client = HttpCacheClient(f"http://127.0.0.1:{free_port()}", timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(CacheUnavailable, match="ClientConnectorError"):
            await client.lookup(chat_query())
    finally:
        await client.close()


async def test_a_service_that_never_answers_costs_the_timeout_then_cache_unavailable() -> None:
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HttpCacheClient(f"http://127.0.0.1:{port}", timeout_s=TIMEOUT_S)
    try:
        async with asyncio.timeout(10):  # a guard for the test, not the behaviour under test
            with pytest.raises(CacheUnavailable, match="no answer within 300 ms"):
                await client.lookup(chat_query())
            with pytest.raises(CacheUnavailable, match="no answer within"):
                await client.store(chat_query(), stored())
    finally:
        await client.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def fake_service() -> AsyncIterator[tuple[str, list[dict[str, Any]], Callable[[bytes, int], None]]]:
    """A stand-in service: records what it is sent and answers with whatever the test sets."""
    seen: list[dict[str, Any]] = []
    reply: dict[str, Any] = {"body": b'{"hit": null}', "status": 200}

    async def handle(request: Request) -> Response:
        seen.append(orjson.loads(await request.body()))
        return Response(reply["body"], reply["status"], media_type="application/json")

    def answer_with(body: bytes, status: int = 200) -> None:
        reply.update(body=body, status=status)

    app = Starlette(routes=[Route("/v1/cache/{call}", handle, methods=["POST"])])
    server = EmbeddedServer(app, "127.0.0.1", 0, "WARNING", "fake-cache")
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}/", seen, answer_with
    finally:
        await server.stop()


async def test_the_request_body_is_sent_for_a_replacement_service(fake_service: Any) -> None:
    url, seen, _ = fake_service
    async with aiohttp.ClientSession() as session:
        client = HttpCacheClient(url, timeout_s=5, session=session)
        query = chat_query()
        request = {"model": "m", "messages": [{"role": "user", "content": "What is Redis?"}]}
        assert await client.lookup(query, request) is None
        await client.store(query, stored(), request)
        await client.close()
        assert not session.closed  # a shared session is the caller's
    assert [s["request"] for s in seen] == [request, request]
    assert seen[0]["query"]["key"] == query.key and seen[0]["query"]["tenant"] == query.tenant
    assert seen[1]["answer"]["body"]["object"] == "chat.completion"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"<html>", 200, "the reply is not JSON"),
        (b'{"hit": {"tier": "fuzzy"}}', 200, "bad lookup reply: hit.tier"),
        (b'{"nothing": 1}', 200, "bad lookup reply"),
        (b'{"error": {"message": "query.key: required"}}', 400, "HTTP 400: query.key: required"),
        (b"oops", 502, "HTTP 502: oops"),
    ],
)
async def test_bad_replies_are_cache_unavailable(
    fake_service: Any, body: bytes, status: int, message: str
) -> None:
    url, _, answer_with = fake_service
    answer_with(body, status)
    client = HttpCacheClient(url, timeout_s=5)
    try:
        with pytest.raises(CacheUnavailable, match=message):
            await client.lookup(chat_query())
    finally:
        await client.close()


async def test_no_lookup_and_no_store_queries_make_no_call(fake_service: Any) -> None:
    url, seen, _ = fake_service
    client = HttpCacheClient(url, timeout_s=5)
    try:
        query: CacheQuery = chat_query(lookup=False, store=False)
        assert await client.lookup(query) is None
        await client.store(query, stored())
    finally:
        await client.close()
    assert seen == []
    with pytest.raises(ValueError, match="must start with http"):
        HttpCacheClient("127.0.0.1:80", timeout_s=1)


async def test_a_resolver_points_the_service_host_elsewhere(fake_service: Any) -> None:
    url, seen, _ = fake_service
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    overrides = {Address("cache-service.default.svc.cluster.local", 80): Address("127.0.0.1", port)}
    client = HttpCacheClient(
        "http://cache-service.default.svc.cluster.local:80", timeout_s=5, resolver=OverrideResolver(overrides)
    )
    try:
        assert await client.lookup(chat_query()) is None
    finally:
        await client.close()
    assert len(seen) == 1


@pytest.mark.slow
async def test_a_frozen_redis_costs_the_client_its_timeout(redis_server: RedisServer) -> None:  # noqa: F811
    async with running_service(settings_for(redis_server.address)) as svc:
        client = HttpCacheClient(svc.url, timeout_s=TIMEOUT_S)
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)  # Redis accepts nothing, answers nothing
        try:
            async with asyncio.timeout(10):  # a guard for the test, not the behaviour under test
                with pytest.raises(CacheUnavailable, match="no answer within 300 ms"):
                    await client.lookup(chat_query("not in the service's LRU"))
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
            await client.close()
