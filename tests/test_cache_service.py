"""`epp cache serve` on a real redis-server: epp's protocol, the admin API, outages, secrets, the command."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from epp.cache.service.protocol import query_json
from epp.cache.types import CacheQuery
from tests.redis_support import RedisServer, redis_server  # noqa: F401
from tests.test_cache_service_support import (
    RunningService,
    chat_query,
    completion,
    metric,
    running_service,
    settings_for,
)
from tests.test_serve_support import free_port

pytestmark = pytest.mark.slow
SEED = Path(__file__).parent / "fixtures" / "seed-configs" / "asm-llm-cache.yaml"
PASSWORD = "s3cret-redis-password-xyz"
TOKEN = "admin-token-0123456789"


@pytest.fixture
async def svc(redis_server: RedisServer) -> AsyncIterator[RunningService]:  # noqa: F811
    async with running_service(settings_for(redis_server.address)) as running:
        yield running


def store_body(query: CacheQuery, content: str = "An in-memory store.", **answer: Any) -> dict[str, Any]:
    fields = {"body": completion(content, query.model), "model": query.model, "created_at": 1.0e9,
              "upstream_s": 3.5, "text": query.text, **answer}  # fmt: skip
    return {"query": query_json(query), "request": {"model": query.model}, "answer": fields}


async def post(url: str, path: str, data: Any, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=10) as client:
        return await client.post(path, json=data, **kw)


async def test_store_then_lookup_hits_and_another_tenant_misses(svc: RunningService) -> None:
    mine, theirs = chat_query(api_key="sk-a"), chat_query(api_key="sk-b")
    reply = await post(svc.url, "/v1/cache/lookup", {"query": query_json(mine), "request": None})
    assert reply.status_code == 200 and reply.json() == {"hit": None}
    reply = await post(svc.url, "/v1/cache/store", store_body(mine))
    assert reply.status_code == 200 and reply.json()["stored"] is True
    entry_id = reply.json()["entry_id"]
    hit = (await post(svc.url, "/v1/cache/lookup", {"query": query_json(mine)})).json()["hit"]
    assert hit["tier"] == "exact" and hit["entry_id"] == entry_id and hit["similarity"] is None
    assert hit["answer"]["body"] == completion("An in-memory store.", "m")
    assert (hit["answer"]["model"], hit["answer"]["upstream_s"], hit["answer"]["created_at"]) == (
        "m",
        3.5,
        1.0e9,
    )
    assert (await post(svc.url, "/v1/cache/lookup", {"query": query_json(theirs)})).json() == {"hit": None}
    no_lookup = {**query_json(mine), "lookup": False}
    assert (await post(svc.url, "/v1/cache/lookup", {"query": no_lookup})).json() == {"hit": None}
    assert metric(svc.registry, "epp_cache_requests_total", status="hit-exact") == 1
    assert metric(svc.registry, "epp_cache_time_saved_seconds_total") == 3.5
    async with httpx.AsyncClient(base_url=svc.url, trust_env=False) as client:
        text = (await client.get("/metrics")).text
    assert 'epp_cache_requests_total{status="hit-exact"} 1.0' in text


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": completion(finish="length")}, "length"),
        ({"body": {"error": {"message": "boom"}}}, "error"),
        ({"query_store": False}, "no_store"),
    ],
)
async def test_unreplayable_answers_are_not_stored(
    svc: RunningService, change: dict[str, Any], reason: str
) -> None:
    query = chat_query()
    body = store_body(query)
    if "query_store" in change:
        body["query"]["store"] = False
    else:
        body["answer"].update(change)
    reply = await post(svc.url, "/v1/cache/store", body)
    assert reply.json() == {"stored": False, "entry_id": None, "reason": reason}
    assert (await post(svc.url, "/v1/cache/lookup", {"query": query_json(query)})).json() == {"hit": None}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b["query"].pop("key"), "query.key: required"),
        (lambda b: b["query"].update(key="abc"), "query.key: must be 64 lower-case hex digits"),
        (lambda b: b["query"].update(kind="embedding"), 'query.kind: must be "chat" or "completion"'),
        (lambda b: b["query"].update(semantic="yes"), "query.semantic: must be a boolean"),
        (lambda b: b["query"].update(ttl_s=-1), "query.ttl_s: must be > 0 or null"),
        (lambda b: b.update(request=[1]), "request: must be the request body"),
        (lambda b: b["answer"].update(body="text"), "answer.body: must be the completion JSON object"),
        (lambda b: b["answer"].pop("created_at"), "answer.created_at: must be a finite number"),
        (lambda b: b.pop("query"), "query: must be an object"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(svc: RunningService, mutate: Any, message: str) -> None:
    body = store_body(chat_query())
    mutate(body)
    reply = await post(svc.url, "/v1/cache/store", body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["message"].startswith(message), reply.text


async def test_not_json_unknown_paths_and_methods(svc: RunningService) -> None:
    async with httpx.AsyncClient(base_url=svc.url, trust_env=False) as client:
        reply = await client.post("/v1/cache/lookup", content=b"{nope")
        assert reply.status_code == 400 and reply.json()["error"]["message"].startswith("body: not JSON")
        assert (await client.get("/nope")).json()["error"]["code"] == "not_found"
        reply = await client.get("/v1/cache/lookup")
        assert reply.status_code == 405 and reply.json()["error"]["code"] == "method_not_allowed"
        reply = await client.post("/v1/cache/lookup", content=b"x" * (8 * 1024 * 1024 + 1))
        assert reply.status_code == 413
        assert (await client.get("/welcome")).text == "hello, modelcache!"


async def test_admin_list_get_delete_truncate(svc: RunningService) -> None:
    one, two = chat_query("q1", model="m1"), chat_query("q2", model="m2")
    ids = [(await post(svc.url, "/v1/cache/store", store_body(q))).json()["entry_id"] for q in (one, two)]
    async with httpx.AsyncClient(base_url=svc.url, trust_env=False) as client:
        listed = (await client.get("/v1/cache/entries")).json()["entries"]
        assert sorted(e["entry_id"] for e in listed) == sorted(ids)
        only = (await client.get("/v1/cache/entries", params={"model": "m1"})).json()["entries"]
        assert [(e["entry_id"], e["model"], e["tier"], e["text"]) for e in only] == [
            (ids[0], "m1", "exact", "q1")
        ]
        assert only[0]["tenant"] == one.tenant and only[0]["expires_at"] > only[0]["created_at"]
        got = (await client.get(f"/v1/cache/entries/{ids[0]}")).json()
        assert got["entry"]["entry_id"] == ids[0] and got["answer"]["body"] == completion(model="m1")
        assert (await client.delete(f"/v1/cache/entries/{ids[0]}")).json() == {"deleted": True}
        assert (await client.get(f"/v1/cache/entries/{ids[0]}")).status_code == 404
        assert (await client.delete(f"/v1/cache/entries/{ids[0]}")).status_code == 404
        assert (await client.delete("/v1/cache/entries")).status_code == 400  # never "delete everything"
        assert (await client.delete("/v1/cache/entries", params={"model": "m2"})).json() == {"deleted": 1}
        assert (await client.get("/v1/cache/entries")).json() == {"entries": []}
        assert (await client.get("/v1/cache/entries", params={"limit": "0"})).status_code == 400
    assert (await post(svc.url, "/v1/cache/lookup", {"query": query_json(two)})).json() == {"hit": None}


async def test_admin_token_guards_the_admin_api_only(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        running_service(settings_for(redis_server.address), token=TOKEN) as svc,
        httpx.AsyncClient(base_url=svc.url, trust_env=False) as client,
    ):
        assert (await client.get("/v1/cache/entries")).status_code == 401
        wrong = await client.get("/v1/cache/entries", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = await client.get("/v1/cache/entries", headers={"authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
        lookup = await client.post("/v1/cache/lookup", json={"query": query_json(chat_query())})
        assert lookup.status_code == 200  # the protocol is for the data planes: no token
        assert (await client.get("/healthz")).status_code == 200
        assert TOKEN not in repr(svc.service.__dict__)
    assert TOKEN not in caplog.text


async def test_redis_outage_is_a_503_and_healthz_says_so(
    svc: RunningService,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    query = chat_query()
    async with httpx.AsyncClient(base_url=svc.url, trust_env=False, timeout=10) as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        redis_server.stop()
        for path, body in (
            ("/v1/cache/lookup", {"query": query_json(query)}),
            ("/v1/cache/store", store_body(query)),
        ):
            reply = await client.post(path, json=body)
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "cache_unavailable", (
                reply.text
            )
        health = await client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert (await client.get("/v1/cache/entries")).status_code == 503
        redis_server.start()
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.post("/v1/cache/store", json=store_body(query))).json()["stored"] is True
    assert metric(svc.registry, "epp_cache_errors_total", operation="lookup") == 1
    assert metric(svc.registry, "epp_cache_errors_total", operation="store") == 1


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Any:
    server = RedisServer(free_port(), tmp_path / "redis-auth", password=PASSWORD)
    server.folder.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_the_password_never_appears_in_logs_or_errors(
    redis_with_password: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    query = chat_query()
    replies: list[str] = []
    async with running_service(settings_for(redis_with_password.address, PASSWORD)) as svc:
        assert (await post(svc.url, "/v1/cache/store", store_body(query))).json()["stored"] is True
        assert PASSWORD not in repr(svc.cache.exact.redis) and PASSWORD not in repr(svc.service.__dict__)
        redis_with_password.stop()
        replies.append((await post(svc.url, "/v1/cache/lookup", {"query": query_json(query)})).text)
    async with running_service(settings_for(redis_with_password.address, "wrong-password-123")) as svc:
        redis_with_password.start()
        reply = await post(svc.url, "/v1/cache/lookup", {"query": query_json(query)})
        assert reply.status_code == 503
        replies.append(reply.text)
    assert all(PASSWORD not in text for text in replies)
    assert PASSWORD not in caplog.text


def epp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "epp.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=full,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "70000"], {}, "argument --port: must be a port in 0..65535"),
        (["--redis", "nohost"], {}, "argument --redis: expected host:port"),
        (["--threshold", "0"], {}, "argument --threshold: must be a number in (0, 1]"),
        ([], {"REDIS_EXPIRED_SECONDS": "soon"}, "config error: environment: REDIS_EXPIRED_SECONDS"),
        ([], {"REDIS_ADDRESS": "a:b:c"}, "config error: environment: REDIS_ADDRESS"),
        (["--admin-token-file", "/no/such/file"], {}, "--admin-token-file /no/such/file: cannot read"),
        (["--config", "/no/such.yaml"], {}, "config error: /no/such.yaml: cannot read file"),
    ],
)
def test_bad_flags_and_config_exit_2_with_one_line(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    run = epp("cache", "serve", "--port", "0", *args, env={"REDIS_PASSWORD": PASSWORD, **env})
    assert run.returncode == 2, run.stderr
    assert expected in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert PASSWORD not in run.stderr


async def test_epp_cache_serve_runs_with_the_seed_and_stops_on_sigterm(redis_server: RedisServer) -> None:  # noqa: F811
    env = {**os.environ, "REDIS_ADDRESS": redis_server.address, "REDIS_EXPIRED_SECONDS": "60"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epp.cli", "cache", "serve", "--port", "0", "--config", str(SEED),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("epp cache serve listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1].strip()
        query = chat_query()
        assert (await post(url, "/v1/cache/store", store_body(query))).json()["stored"] is True
        hit = (await post(url, "/v1/cache/lookup", {"query": query_json(query)})).json()["hit"]
        assert hit["tier"] == "exact"
        async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
            entry = (await client.get("/v1/cache/entries")).json()["entries"][0]
        assert 50 < entry["expires_at"] - time.time() <= 60  # REDIS_EXPIRED_SECONDS from the environment
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await proc.wait()
    log = (await proc.stderr.read()).decode()
    assert code == 0, log
    assert "shutting down" in log and "Traceback" not in log
