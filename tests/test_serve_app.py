"""EppApp wiring in-process: real gRPC and HTTP servers on free ports, pods faked at the scrape client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from epp.app import EppApp, ServeOptions, build_app
from epp.config import ConfigError, load_config, parse_endpoints
from tests.test_serve_support import extproc_route, wait_until


@dataclass
class FakePod:
    waiting: int = 0
    up: bool = True


@dataclass
class FakeFleet:
    """Answers /metrics for pods by port, as a vLLM pod would (only the lines epp reads)."""

    pods: dict[int, FakePod] = field(default_factory=dict)

    def handler(self, request: httpx.Request) -> httpx.Response:
        pod = self.pods.get(request.url.port or 0)
        if pod is None or not pod.up:
            raise httpx.ConnectError("connection refused", request=request)
        text = (
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="m"}} {pod.waiting}\n'
            "# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{model_name="m"} 0\n'
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
        )
        return httpx.Response(200, text=text)


@dataclass
class Running:
    app: EppApp
    fleet: FakeFleet
    http: httpx.AsyncClient


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    fleet = FakeFleet({9101: FakePod(), 9102: FakePod()})
    options = ServeOptions(grpc_port=0, http_port=0, staleness_s=0.5, scrape_interval_s=0.02, seed=1)
    config = load_config([], {}, strategy="LOAD_AWARE")
    endpoints = parse_endpoints("a=127.0.0.1:9101,b=127.0.0.1:9102")
    async with httpx.AsyncClient(transport=httpx.MockTransport(fleet.handler)) as scrape_client:
        app = EppApp(config, endpoints, options, scrape_client=scrape_client)
        task = asyncio.create_task(app.run())
        try:
            await wait_until(_http_port(app), "the HTTP server")
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{app.http_port}", trust_env=False
            ) as http:
                yield Running(app, fleet, http)
        finally:
            app.request_stop()
            await asyncio.wait_for(task, 10)


def _http_port(app: EppApp) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return app.http_port != 0

    return probe


def chat(text: str) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


async def test_http_and_extproc_pick_and_follow_scraped_load(running: Running) -> None:
    http = running.http

    async def ready() -> bool:
        return (await http.get("/readyz")).status_code == 200

    await wait_until(ready, "/readyz")
    r = await http.post("/pick", json=chat("hello"))
    assert r.status_code == 200
    assert r.json()["strategy"] == "LOAD_AWARE"
    # A long queue on pod a (over the saturation threshold) steers picks to b, over HTTP and ext_proc.
    running.fleet.pods[9101].waiting = 20

    async def a_is_loaded() -> bool:
        metrics = (await http.get("/metrics")).text
        return 'llm_d_epp_per_endpoint_queue_size{model_server_endpoint="a",name="default"} 20.0' in metrics

    await wait_until(a_is_loaded, "the scrape of pod a's queue")
    for i in range(5):
        assert (await http.post("/pick", json=chat(f"question {i}"))).json()["endpoint_name"] == "b"
        answer = await extproc_route(running.app.grpc_port, chat(f"grpc question {i}"))
        assert answer.destination == "127.0.0.1:9102"
    # A pod whose /metrics stops answering is no longer schedulable; with both down epp is not ready.
    running.fleet.pods[9102].up = False
    running.fleet.pods[9101].up = False

    async def not_ready() -> bool:
        return (await http.get("/readyz")).status_code == 503

    await wait_until(not_ready, "/readyz to fail")
    assert (await http.post("/pick", json=chat("x"))).status_code == 503
    answer = await extproc_route(running.app.grpc_port, chat("x"))
    assert answer.status == 503


def test_build_app_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "pool.yaml"
    bad.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata: {name: p}\n"
        "spec: {targetPortNumber: nope}\n"
    )
    with pytest.raises(ConfigError) as err:
        build_app(ServeOptions(config_paths=[str(bad)]), {})
    assert "pool.yaml" in str(err.value)
    assert "targetPortNumber" in str(err.value)
    with pytest.raises(ConfigError, match="--endpoints"):
        build_app(ServeOptions(endpoints="127.0.0.1:1,127.0.0.1:1"), {})
    app = build_app(ServeOptions(endpoints="127.0.0.1:1,x=127.0.0.1:2", strategy="ROUND_ROBIN"), {})
    assert [e.name for e in app.datastore.endpoints()] == ["127.0.0.1:1", "x"]
    assert app.config.strategy_name == "ROUND_ROBIN"
