"""ModelCache's HTTP API on epp's cache service (real Redis): insert, query, remove, register, as ModelCache's
own clients send them (a JSON string of JSON) and as plain JSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from epp.cache.service.protocol import query_json
from tests.redis_support import RedisServer, redis_server  # noqa: F401
from tests.test_cache_service_support import (
    FakeSemantic,
    RunningService,
    chat_query,
    running_service,
    settings_for,
)

pytestmark = pytest.mark.slow
MODEL = "CODEGPT-1117"
SYSTEM = {"role": "system", "content": "You are a Python assistant"}
QUERY = [SYSTEM, {"role": "user", "content": "hello"}]


@pytest.fixture
async def svc(redis_server: RedisServer) -> AsyncIterator[RunningService]:  # noqa: F811
    async with running_service(settings_for(redis_server.address)) as running:
        yield running


async def call(url: str, data: dict[str, Any], double: bool = True) -> dict[str, Any]:
    """POST /modelcache as ModelCache's examples do (`json=json.dumps(data)`) or as plain JSON."""
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=10) as client:
        reply = await client.post("/modelcache", json=json.dumps(data) if double else data)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def insert(
    answer: str = "Hi, I am your assistant.", query: list[dict[str, str]] = QUERY, model: str = MODEL
) -> dict[str, Any]:
    return {"type": "insert", "scope": {"model": model}, "chat_info": [{"query": query, "answer": answer}]}


def query(messages: list[dict[str, str]] = QUERY, model: str = MODEL) -> dict[str, Any]:
    return {"type": "query", "scope": {"model": model}, "query": messages}


@pytest.mark.parametrize("double", [True, False])
async def test_insert_query_delete_by_id(svc: RunningService, double: bool) -> None:
    assert (await call(svc.url, query(), double))["cacheHit"] is False
    inserted = await call(svc.url, insert(), double)
    assert inserted["errorCode"] == 0 and inserted["writeStatus"] == "success"
    (entry_id,) = inserted["id_list"]
    hit = await call(svc.url, query(), double)
    assert hit["errorCode"] == 0 and hit["errorDesc"] == ""
    assert (
        hit["cacheHit"] is True
        and hit["answer"] == "Hi, I am your assistant."
        and hit["hit_query"] == "hello"
    )
    assert hit["delta_time"].endswith("s")
    other_system = [{"role": "system", "content": "You are a poet"}, QUERY[1]]
    assert (await call(svc.url, query(other_system), double))["cacheHit"] is False
    assert (await call(svc.url, query(model="OTHER-1")))["cacheHit"] is False
    assert (await call(svc.url, query(model="CODEGPT_1117")))["cacheHit"] is True  # ModelCache's name folding
    removed = await call(svc.url, {"type": "remove", "scope": {"model": MODEL}, "remove_type": "delete_by_id",
                                   "id_list": [entry_id]}, double)  # fmt: skip
    assert removed == {"errorCode": 0, "errorDesc": "", "writeStatus": "success",
                       "response": {"status": "success", "delete_count": 1}}  # fmt: skip
    assert (await call(svc.url, query(), double))["cacheHit"] is False


async def test_truncate_by_model_touches_that_scope_only(svc: RunningService) -> None:
    assert (await call(svc.url, insert("a1")))["errorCode"] == 0
    assert (await call(svc.url, insert("a2", [{"role": "user", "content": "bye"}])))["errorCode"] == 0
    assert (await call(svc.url, insert("b", model="OTHER-2")))["errorCode"] == 0
    gateway_query = chat_query(model=MODEL)  # the gateway's entry of the same model name, another tenant
    async with httpx.AsyncClient(base_url=svc.url, trust_env=False) as client:
        choice = {"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}
        answer = {"body": {"object": "chat.completion", "choices": [choice]}, "model": MODEL, "created_at": 1}
        body = {"query": query_json(gateway_query), "answer": answer}
        assert (await client.post("/v1/cache/store", json=body)).json()["stored"] is True
    removed = await call(
        svc.url, {"type": "remove", "scope": {"model": MODEL}, "remove_type": "truncate_by_model"}
    )
    assert removed["errorCode"] == 0 and removed["response"] == {"status": "success", "delete_count": 2}
    assert (await call(svc.url, query()))["cacheHit"] is False
    assert (await call(svc.url, query(model="OTHER-2")))["cacheHit"] is True
    async with httpx.AsyncClient(base_url=svc.url, trust_env=False) as client:
        hit = (await client.post("/v1/cache/lookup", json={"query": query_json(gateway_query)})).json()["hit"]
    assert hit is not None  # the gateway's entries are not ModelCache's to remove
    # delete_by_id never reaches outside the scope either
    other_id = (await call(svc.url, insert("c", model="OTHER-3")))["id_list"][0]
    removed = await call(svc.url, {"type": "remove", "scope": {"model": MODEL}, "remove_type": "delete_by_id",
                                   "id_list": [other_id, "no-such-id", 7]})  # fmt: skip
    assert removed["response"]["delete_count"] == 0
    assert (await call(svc.url, query(model="OTHER-3")))["cacheHit"] is True


async def test_register_and_error_codes(svc: RunningService) -> None:
    register = {"type": "register", "scope": {"model": MODEL}}
    assert await call(svc.url, register) == {"errorCode": 0, "errorDesc": "", "response": "create_success",
                                             "writeStatus": "success"}  # fmt: skip
    assert (await call(svc.url, register))["response"] == "already_exists"
    async with httpx.AsyncClient(base_url=svc.url, trust_env=False) as client:
        not_json = (await client.post("/modelcache", content=b"{oops")).json()
    assert not_json["errorCode"] == 101 and not_json["cacheHit"] is False
    assert (await call(svc.url, {"type": "upsert", "scope": {"model": MODEL}}))["errorCode"] == 102
    assert (await call(svc.url, {"type": "query", "query": QUERY}))["errorCode"] == 103
    bad_query = await call(svc.url, {"type": "query", "scope": {"model": MODEL}, "query": "hello"})
    assert bad_query["errorCode"] == 202 and "query" in bad_query["errorDesc"]
    bad_insert = await call(
        svc.url, {"type": "insert", "scope": {"model": MODEL}, "chat_info": [{"query": QUERY}]}
    )
    assert bad_insert == {"errorCode": 302, "errorDesc": bad_insert["errorDesc"], "writeStatus": "exception"}
    bad_remove = await call(svc.url, {"type": "remove", "scope": {"model": MODEL}, "remove_type": "drop"})
    assert bad_remove["errorCode"] == 401 and bad_remove["removeStatus"] == "exception"


async def test_redis_outage_answers_with_modelcache_error_codes(
    svc: RunningService,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    redis_server.stop()
    assert (await call(svc.url, query()))["errorCode"] == 202
    assert (await call(svc.url, insert()))["errorCode"] == 302
    truncate = {"type": "remove", "scope": {"model": MODEL}, "remove_type": "truncate_by_model"}
    assert (await call(svc.url, truncate))["errorCode"] == 402


async def test_entries_go_to_the_semantic_tier_when_it_is_on(redis_server: RedisServer) -> None:  # noqa: F811
    semantic = FakeSemantic()
    async with running_service(settings_for(redis_server.address), semantic=semantic) as svc:
        (entry_id,) = (await call(svc.url, insert()))["id_list"]
        assert entry_id.startswith("sem-") and len(semantic.entries_by_id) == 1
        paraphrase = [SYSTEM, {"role": "user", "content": "  HELLO "}]
        hit = await call(svc.url, query(paraphrase))
        assert hit["cacheHit"] is True and hit["answer"] == "Hi, I am your assistant."
        # a last message that is not a user's text cannot be embedded: the exact tier keeps it
        (exact_id,) = (await call(svc.url, insert("ok", [{"role": "assistant", "content": "hi"}])))["id_list"]
        assert not exact_id.startswith("sem-")
        remove = {"type": "remove", "scope": {"model": MODEL}, "remove_type": "delete_by_id"}
        removed = await call(svc.url, {**remove, "id_list": [entry_id, exact_id]})
        assert removed["response"]["delete_count"] == 2
        assert (await call(svc.url, query(paraphrase)))["cacheHit"] is False


async def test_the_real_semantic_tier_answers_a_paraphrase(redis_server: RedisServer) -> None:  # noqa: F811
    async with running_service(settings_for(redis_server.address), real_semantic=True) as svc:
        asked = [SYSTEM, {"role": "user", "content": "How do I reverse a list in Python?"}]
        assert (await call(svc.url, insert("Use reversed() or list.reverse().", asked)))["errorCode"] == 0
        paraphrase = [SYSTEM, {"role": "user", "content": "How can I reverse a list in Python?"}]
        hit = await call(svc.url, query(paraphrase))
        assert hit["cacheHit"] is True and hit["hit_query"] == "How do I reverse a list in Python?"
        other = [SYSTEM, {"role": "user", "content": "How do I sort a list in Python?"}]
        assert (await call(svc.url, query(other)))["cacheHit"] is False
        truncate = {"type": "remove", "scope": {"model": MODEL}, "remove_type": "truncate_by_model"}
        assert (await call(svc.url, truncate))["response"]["delete_count"] == 1
        assert (await call(svc.url, query(paraphrase)))["cacheHit"] is False
