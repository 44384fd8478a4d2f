"""The response cache in `epp gateway`, end to end: the seed's WasmPlugin + ConfigMap loaded unchanged, real
Redis (Debian's redis-server), simulated pods, httpx and the openai SDK as clients.

"The pod was not called" is read off the pods' own `vllm:request_success_total`, so a hit is proven to be
answered by the cache, not by a fast pod.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from bench.sim.fleet import SimFleet
from epp.cache.semantic.tier import DEFAULT_THRESHOLD
from gateway.server import Gateway, GatewayOptions, build_gateway
from tests.redis_support import RedisServer, redis_server  # noqa: F401
from tests.test_cache_service_support import metric, running_service, settings_for
from tests.test_gateway_support import MODEL, addresses, metric_value
from tests.test_serve_support import wait_until

pytestmark = pytest.mark.slow

SEED = Path(__file__).parent / "fixtures" / "seed-configs" / "asm-llm-cache.yaml"
HOST = "dashscope.aliyuncs.com"  # the seed's host_match
KEY_A = {"authorization": "Bearer sk-tenant-a", "host": HOST}
KEY_B = {"authorization": "Bearer sk-tenant-b", "host": HOST}


@contextlib.asynccontextmanager
async def cached_gateway(
    redis: RedisServer, fleet: SimFleet, env: dict[str, str] | None = None, **options: Any
) -> AsyncIterator[Gateway]:
    options.setdefault("config_paths", [str(SEED)])
    opts = GatewayOptions(
        endpoints=addresses(fleet),
        port=0,
        scrape_interval_s=0.02,
        seed=1,
        log_level="WARNING",
        **{"cache_service": "in-process", **options},
    )
    gateway = build_gateway(opts, {"REDIS_ADDRESS": redis.address, **(env or {})})
    await gateway.start()
    try:
        await wait_until(_scraped(gateway), "every pod to be scraped")
        yield gateway
    finally:
        await gateway.stop()


def _scraped(gateway: Gateway) -> Any:
    async def probe() -> bool:
        return len(gateway.datastore.schedulable()) == len(gateway.datastore.endpoints())

    return probe


async def pod_requests(fleet: SimFleet) -> float:
    async with httpx.AsyncClient(trust_env=False) as client:
        total = 0.0
        for url in fleet.urls:
            total += metric_value((await client.get(f"{url}/metrics")).text, "vllm:request_success_total")
        return total


def question(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(pods=2, profile="tiny", time_scale=20.0, log_level="critical") as pods:
        yield pods


async def test_second_identical_request_is_answered_by_the_cache(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    async with (
        cached_gateway(redis_server, fleet) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10) as client,
    ):
        first = await client.post("/v1/chat/completions", json=question("what is a KV cache?"), headers=KEY_A)
        assert first.status_code == 200 and first.headers["x-epp-cache"] == "miss"
        served = await pod_requests(fleet)
        await wait_until(_stored(gateway), "the answer to be stored")
        second = await client.post(
            "/v1/chat/completions", json=question("what is a KV cache?"), headers=KEY_A
        )
        assert second.status_code == 200 and second.headers["x-epp-cache"] == "hit-exact"
        assert await pod_requests(fleet) == served  # no pod saw the second request
        a, b = first.json(), second.json()
        assert b["choices"][0]["message"] == a["choices"][0]["message"]
        assert b["id"] != a["id"] and b["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        # another tenant (API key) never shares the entry
        other = await client.post("/v1/chat/completions", json=question("what is a KV cache?"), headers=KEY_B)
        assert other.headers["x-epp-cache"] == "miss"
        # a host the WasmPlugin does not match: not even looked at
        plain = await client.post("/v1/chat/completions", json=question("what is a KV cache?"))
        assert plain.status_code == 200 and "x-epp-cache" not in plain.headers
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "epp_cache_requests_total", status="hit-exact") == 1
        assert metric_value(metrics, "epp_cache_time_saved_seconds_total") > 0


def _stored(gateway: Gateway) -> Any:
    async def probe() -> bool:
        text = (await httpx.AsyncClient(trust_env=False).get(f"{gateway.base_url}/metrics")).text
        return metric_value(text, "epp_cache_stores_total", result="stored") >= 1

    return probe


async def test_streamed_answer_is_stored_and_replayed_byte_equal(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    async with cached_gateway(redis_server, fleet) as gateway:
        sdk = openai.AsyncOpenAI(
            base_url=f"{gateway.base_url}/v1", api_key="sk-tenant-a", default_headers={"host": HOST}
        )
        try:
            messages: Any = [{"role": "user", "content": "stream me a story"}]
            stream = await sdk.chat.completions.create(
                model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
            )
            original = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert original
            await wait_until(_stored(gateway), "the streamed answer to be stored")
            served = await pod_requests(fleet)
            raw = await sdk.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
            )
            assert raw.headers["x-epp-cache"] == "hit-exact"
            chunks = [c async for c in raw.parse()]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == original
            assert chunks[-1].usage is not None  # the usage chunk, as asked for
            # the same entry serves the non-streaming form
            whole = await sdk.chat.completions.create(model=MODEL, messages=messages)
            assert whole.choices[0].message.content == original
            assert await pod_requests(fleet) == served
        finally:
            await sdk.close()


async def test_errors_and_truncated_answers_are_never_stored(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    async with (
        cached_gateway(redis_server, fleet) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A) as client,
    ):
        truncated = question("cut me short", max_tokens=2)  # finish_reason "length"
        for _ in range(2):
            reply = await client.post("/v1/chat/completions", json=truncated)
            assert reply.status_code == 200 and reply.headers["x-epp-cache"] == "miss"
        for pod in fleet.pods:
            pod.fault.set("error")
        failed = await client.post("/v1/chat/completions", json=question("fail me"))
        assert failed.status_code >= 500
        for pod in fleet.pods:
            pod.fault.clear()
        again = await client.post("/v1/chat/completions", json=question("fail me"))
        assert again.status_code == 200 and again.headers["x-epp-cache"] == "miss"
        text = (await client.get("/metrics")).text
        assert metric_value(text, "epp_cache_requests_total", status="hit-exact") == 0


async def test_bypass_and_client_directives(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    async with (
        cached_gateway(redis_server, fleet) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A) as client,
    ):
        sampled = question("roll a die", temperature=0.9)
        assert (await client.post("/v1/chat/completions", json=sampled)).headers["x-epp-cache"] == "bypass"
        two = question("two answers", n=2, max_tokens=3)
        assert (await client.post("/v1/chat/completions", json=two)).headers["x-epp-cache"] == "bypass"
        no_store = {"cache-control": "no-store"}
        reply = await client.post("/v1/chat/completions", json=question("secret"), headers=no_store)
        assert reply.headers["x-epp-cache"] == "bypass"
        # a namespaced entry is found only in its namespace
        body = question("namespaced", cache={"namespace": "team-1"})
        assert (await client.post("/v1/chat/completions", json=body)).headers["x-epp-cache"] == "miss"
        await wait_until(_stored(gateway), "the namespaced answer to be stored")
        assert (await client.post("/v1/chat/completions", json=body)).headers["x-epp-cache"] == "hit-exact"
        plain = question("namespaced")
        assert (await client.post("/v1/chat/completions", json=plain)).headers["x-epp-cache"] == "miss"
        bad = question("x", cache={"ttl": "soon"})
        refused = await client.post("/v1/chat/completions", json=bad)
        assert refused.status_code == 400 and refused.json()["error"]["param"].startswith("cache")


async def test_entries_expire_after_redis_expired_seconds(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    env = {"REDIS_EXPIRED_SECONDS": "1"}
    # no in-process LRU would hide Redis's expiry here: the LRU keeps the same expiry time
    async with (
        cached_gateway(redis_server, fleet, env) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A) as client,
    ):
        body = question("short-lived")
        assert (await client.post("/v1/chat/completions", json=body)).headers["x-epp-cache"] == "miss"
        await wait_until(_stored(gateway), "the answer to be stored")
        assert (await client.post("/v1/chat/completions", json=body)).headers["x-epp-cache"] == "hit-exact"

        async def expired() -> bool:
            reply = await client.post("/v1/chat/completions", json=body)
            return reply.headers["x-epp-cache"] == "miss"

        await wait_until(expired, "the entry to expire", deadline_s=10, interval=0.3)


async def test_redis_down_fails_open_and_counts_errors(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    async with (
        cached_gateway(redis_server, fleet) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A) as client,
    ):
        redis_server.stop()
        for i in range(3):
            reply = await client.post("/v1/chat/completions", json=question(f"while redis is down {i}"))
            assert reply.status_code == 200 and reply.headers["x-epp-cache"] == "miss"
        text = (await client.get("/metrics")).text
        assert metric_value(text, "epp_cache_errors_total", operation="lookup") >= 3


async def test_entries_survive_a_redis_and_gateway_restart(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    body = question("remember me")
    async with (
        cached_gateway(redis_server, fleet) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A) as client,
    ):
        assert (await client.post("/v1/chat/completions", json=body)).headers["x-epp-cache"] == "miss"
        await wait_until(_stored(gateway), "the answer to be stored")
    redis_server.restart()  # the append-only file brings the entry back
    async with (
        cached_gateway(redis_server, fleet) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A) as client,
    ):
        reply = await client.post("/v1/chat/completions", json=body)
        assert reply.headers["x-epp-cache"] == "hit-exact"


async def test_concurrent_identical_misses_reach_the_pod_once(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    async with (
        cached_gateway(redis_server, fleet) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A) as client,
    ):
        before = await pod_requests(fleet)
        body = orjson.dumps(question("everyone asks this at once"))
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", content=body) for _ in range(6)))
        assert all(r.status_code == 200 for r in replies)
        statuses = sorted(r.headers["x-epp-cache"] for r in replies)
        assert statuses.count("miss") == 1, statuses
        assert await pod_requests(fleet) == before + 1
        contents = {r.json()["choices"][0]["message"]["content"] for r in replies}
        assert len(contents) == 1


class BodyRecorder:
    """ASGI wrapper around a pod: keeps each request body it receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages, chunks = [], []
        while True:
            message = await receive()
            messages.append(message)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.bodies.append(orjson.loads(b"".join(chunks)))
        replay = iter(messages)

        async def again() -> Any:
            message = next(replay, None)
            return message if message is not None else await receive()  # waits for a real disconnect

        await self.app(scope, again, send)


async def test_the_cache_object_never_reaches_the_pod(redis_server: RedisServer) -> None:  # noqa: F811
    fleet = SimFleet(pods=1, profile="tiny", time_scale=20.0, log_level="critical")
    recorder = BodyRecorder(fleet.apps[0])
    fleet.apps = [recorder]  # type: ignore[list-item]
    async with (
        fleet,
        cached_gateway(redis_server, fleet) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A) as client,
    ):
        body = question("strip my directives", cache={"ttl": 60, "namespace": "n1"})
        reply = await client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200 and reply.headers["x-epp-cache"] == "miss"
    assert recorder.bodies and all("cache" not in b for b in recorder.bodies)
    assert recorder.bodies[-1]["messages"] == body["messages"]


SEMANTIC_CONFIG = """
apiVersion: epp.dev/v1alpha1
kind: LLMCache
metadata: {name: semantic}
spec:
  backend: InProcess
  pathMatch: /v1/chat/completions
  failStrategy: FAIL_OPEN
  semantic: {enabled: true, models: ["sim/*"]}
"""


async def test_a_paraphrase_is_answered_by_the_semantic_tier(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
    tmp_path: Path,
) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text(SEMANTIC_CONFIG)
    async with (
        cached_gateway(redis_server, fleet, config_paths=[str(config)]) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=30, headers=KEY_A) as client,
    ):
        first = await client.post("/v1/chat/completions", json=question("How do I reverse a list in Python?"))
        assert first.headers["x-epp-cache"] == "miss"
        await wait_until(_stored(gateway), "the answer to be stored")
        served = await pod_requests(fleet)
        paraphrase = question("how can I reverse a Python list?")
        second = await client.post("/v1/chat/completions", json=paraphrase)
        assert second.headers["x-epp-cache"] == "hit-semantic", second.headers
        assert float(second.headers["x-epp-cache-similarity"]) >= DEFAULT_THRESHOLD
        assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
        assert await pod_requests(fleet) == served
        # a trap the guards stop: another language
        trap = await client.post("/v1/chat/completions", json=question("How do I reverse a list in Java?"))
        assert trap.headers["x-epp-cache"] == "miss"
        # another tenant never sees the entry
        other = await client.post("/v1/chat/completions", json=paraphrase, headers=KEY_B)
        assert other.headers["x-epp-cache"] == "miss"


SERVICE_HOST = "asm-wasm-cache-service-example.default.svc.cluster.local:80"  # the seed's service:port


async def test_the_seed_unchanged_through_its_http_cache_service(
    redis_server: RedisServer,  # noqa: F811
    fleet: SimFleet,
) -> None:
    # The WasmPlugin names an HTTP cache service: `epp cache serve`'s app, reached through --resolve.
    settings = settings_for(redis_server.address)
    async with running_service(settings) as service:
        port = service.url.rsplit(":", 1)[1]
        async with (
            cached_gateway(
                redis_server, fleet, cache_service=None, resolve=(f"{SERVICE_HOST}=127.0.0.1:{port}",)
            ) as gateway,
            httpx.AsyncClient(
                base_url=gateway.base_url, trust_env=False, timeout=10, headers=KEY_A
            ) as client,
        ):
            body = question("asked through the cache service")
            assert (await client.post("/v1/chat/completions", json=body)).headers["x-epp-cache"] == "miss"

            async def stored_in_service() -> bool:
                return metric(service.registry, "epp_cache_lookups_total", tier="exact", result="miss") >= 1

            await wait_until(stored_in_service, "the service to see the lookup")
            await wait_until(_stored(gateway), "the answer to be stored")
            served = await pod_requests(fleet)
            hit = await client.post("/v1/chat/completions", json=body)
            assert hit.headers["x-epp-cache"] == "hit-exact"
            assert await pod_requests(fleet) == served
            entries = (await httpx.AsyncClient(trust_env=False).get(f"{service.url}/v1/cache/entries")).json()
            assert len(entries["entries"]) == 1
