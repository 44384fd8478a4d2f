"""The response cache behind real Envoy: epp serve's ext_proc answers hits with an ImmediateResponse and
records misses from the response body Envoy streams to it (mode_override for selected requests only).

The seed's WasmPlugin + ConfigMap are loaded unchanged; Redis is Debian's redis-server; pods are `epp sim`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.sim.process import SimProcess
from tests.redis_support import RedisServer, redis_server  # noqa: F401
from tests.test_envoy_support import MODEL, addresses, metric_sum, poll, served, sim_pods

pytestmark = pytest.mark.slow

SEED = Path(__file__).parent / "fixtures" / "seed-configs" / "asm-llm-cache.yaml"
HOST = "dashscope.aliyuncs.com"
TENANT = {"authorization": "Bearer sk-tenant-a", "host": HOST}


@pytest.fixture(scope="module")
def pods() -> Iterator[SimProcess]:
    with sim_pods(2, time_scale=20.0) as sim:
        yield sim


@pytest.fixture
def stack(pods: SimProcess, redis_server: RedisServer) -> Iterator[EnvoyStack]:  # noqa: F811
    options = StackOptions(
        config_paths=[str(SEED)],
        serve_args=("--cache-service", "in-process", "--seed", "1"),
        serve_env={"REDIS_ADDRESS": redis_server.address},
    )
    with EnvoyStack(addresses(pods), options) as envoy:
        yield envoy


def question(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def stored(stack: EnvoyStack, at_least: int = 1) -> bool:
    return metric_sum(stack.epp_url, "epp_cache_stores_total", result="stored") >= at_least


def sse_content(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            event = orjson.loads(line[6:])
            for choice in event.get("choices") or []:
                out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


def test_hit_is_answered_by_envoy_without_a_pod(stack: EnvoyStack, pods: SimProcess) -> None:
    with httpx.Client(base_url=stack.base_url, trust_env=False, timeout=10, headers=TENANT) as client:
        first = client.post("/v1/chat/completions", json=question("what does ext_proc do?"))
        assert first.status_code == 200, first.text
        assert first.headers["x-epp-cache"] == "miss"
        poll(lambda: stored(stack), "the answer to be stored")
        before = sum(served(pods.urls))
        second = client.post("/v1/chat/completions", json=question("what does ext_proc do?"))
        assert second.status_code == 200 and second.headers["x-epp-cache"] == "hit-exact"
        assert second.headers["content-type"].startswith("application/json")
        assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
        assert sum(served(pods.urls)) == before


def test_streamed_miss_then_streamed_hit(stack: EnvoyStack, pods: SimProcess) -> None:
    body = question("stream through envoy", stream=True)
    with httpx.Client(base_url=stack.base_url, trust_env=False, timeout=10, headers=TENANT) as client:
        first = client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and first.headers["x-epp-cache"] == "miss"
        original = sse_content(first.text)
        assert original and first.text.rstrip().endswith("data: [DONE]")
        poll(lambda: stored(stack), "the streamed answer to be stored")
        second = client.post("/v1/chat/completions", json=body)
        assert second.headers["x-epp-cache"] == "hit-exact"
        assert second.headers["content-type"].startswith("text/event-stream")
        assert sse_content(second.text) == original


def test_unselected_requests_and_forged_headers(stack: EnvoyStack) -> None:
    with httpx.Client(base_url=stack.base_url, trust_env=False, timeout=10) as client:
        plain = client.post(
            "/v1/chat/completions", json=question("not for the cache"), headers={"x-epp-cache": "hit-exact"}
        )
        assert plain.status_code == 200 and "x-epp-cache" not in plain.headers
        truncated = question("too short", max_tokens=2)
        for _ in range(2):
            reply = client.post("/v1/chat/completions", json=truncated, headers=TENANT)
            assert reply.status_code == 200 and reply.headers["x-epp-cache"] == "miss"


def test_redis_outage_fails_open(stack: EnvoyStack, redis_server: RedisServer) -> None:  # noqa: F811
    redis_server.stop()
    with httpx.Client(base_url=stack.base_url, trust_env=False, timeout=10, headers=TENANT) as client:
        for i in range(3):
            reply = client.post("/v1/chat/completions", json=question(f"redis is gone {i}"))
            assert reply.status_code == 200 and reply.headers["x-epp-cache"] == "miss"
    assert metric_sum(stack.epp_url, "epp_cache_errors_total", operation="lookup") >= 3
