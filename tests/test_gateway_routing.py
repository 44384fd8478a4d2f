"""Routing through the gateway: prefix stickiness, and pods that fail before answering cost no request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson

from bench.sim.fleet import SimFleet
from epp.embedded_http import EmbeddedServer
from gateway.asgi import Receive, Scope, Send, send_bytes
from gateway.upstream import ENDPOINT_HEADER
from tests.test_gateway_support import (
    MODEL,
    addresses,
    assert_openai_error,
    chat,
    client_of,
    completion,
    metric_value,
    serving,
)
from tests.test_serve_support import wait_until
from tests.test_sim_support import prompt

POD_HEADER = ENDPOINT_HEADER.decode()


async def _pods_serving_shared_prefix(client: httpx.AsyncClient) -> list[str]:
    shared = prompt(1, words=120)
    pods = []
    for i in range(6):
        r = await client.post("/v1/chat/completions", json=chat(f"{shared}\nQuestion {i}?", max_tokens=2))
        assert r.status_code == 200, r.text
        pods.append(r.headers[POD_HEADER])
    return pods


async def test_prompts_sharing_a_long_prefix_stick_to_one_pod() -> None:
    async with (
        SimFleet(pods=4, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), strategy="PREFIX_CACHE") as gateway,
        client_of(gateway) as client,
    ):
        pods = await _pods_serving_shared_prefix(client)
        assert len(set(pods)) == 1, pods
        text = (await client.get("/metrics")).text
        # After the first request the prefix was cached where it went, and the picker saw it.
        assert metric_value(text, "llm_d_epp_prefix_indexer_hit_ratio_count") == 6
        assert metric_value(text, "llm_d_epp_prefix_indexer_hit_ratio_bucket", le="0.5") <= 1


async def test_the_same_prompts_spread_without_prefix_routing() -> None:
    async with (
        SimFleet(pods=4, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), strategy="ROUND_ROBIN") as gateway,
        client_of(gateway) as client,
    ):
        assert len(set(await _pods_serving_shared_prefix(client))) == 4


async def test_pod_closing_connections_costs_no_request() -> None:
    async with (
        SimFleet(pods=2, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), strategy="ROUND_ROBIN") as gateway,
        client_of(gateway) as client,
    ):
        bad, good = (e.name for e in gateway.datastore.endpoints())
        assert bad == fleet.urls[0].removeprefix("http://")
        fleet.pods[0].fault.set("close")  # accepts, reads the request, closes without a byte
        replies = [await client.post("/v1/chat/completions", json=chat(f"q{i}")) for i in range(6)]
        assert [r.status_code for r in replies] == [200] * 6
        assert {r.headers[POD_HEADER] for r in replies} == {good}
        text = (await client.get("/metrics")).text
        assert metric_value(text, "epp_retries_total") >= 1
        assert metric_value(text, "epp_endpoint_attempts_total", endpoint=bad, outcome="reset") >= 1
        assert all(s.in_flight == 0 for s in gateway.datastore.states())


async def test_killed_pod_costs_no_request() -> None:
    async with (
        SimFleet(pods=1, profile="tiny", time_scale=20.0, log_level="critical") as doomed,
        SimFleet(pods=1, profile="tiny", time_scale=20.0, log_level="critical") as survivor,
        serving(addresses(doomed, survivor), strategy="ROUND_ROBIN", staleness_s=60.0) as gateway,
        client_of(gateway) as client,
    ):
        # No more scrapes: the dead pod still looks healthy when requests are picked for it.
        await gateway.core.stop_scraping()
        await doomed.stop()  # the port now refuses connections
        replies = await asyncio.gather(
            *(client.post("/v1/completions", json=completion(f"p{i}")) for i in range(6))
        )
        assert [r.status_code for r in replies] == [200] * 6
        survivor_name = survivor.urls[0].removeprefix("http://")
        assert {r.headers[POD_HEADER] for r in replies} == {survivor_name}
        dead = gateway.datastore.get(doomed.urls[0].removeprefix("http://"))
        assert dead is not None and not gateway.datastore.is_schedulable(dead)  # marked failed
        assert all(s.in_flight == 0 for s in gateway.datastore.states())


async def test_every_pod_unreachable_is_502_json() -> None:
    async with (
        SimFleet(pods=2, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), strategy="ROUND_ROBIN") as gateway,
        client_of(gateway) as client,
    ):
        for pod in fleet.pods:
            pod.fault.set("close")
        r = await client.post("/v1/chat/completions", json=chat("anyone?"))
        assert_openai_error(r, 502, "upstream_unavailable")
        assert all(s.in_flight == 0 for s in gateway.datastore.states())


_METRICS = (
    b'vllm:num_requests_waiting{model_name="m"} 0\n'
    b'vllm:num_requests_running{model_name="m"} 0\n'
    b'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
)


async def _pod_breaking_off_mid_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """A pod whose metrics are fine but who drops the connection after the first SSE event."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/metrics":
        await send_bytes(send, 200, _METRICS, b"text/plain")
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
    send.__self__.transport.close()  # type: ignore[attr-defined]  # uvicorn's bound send


async def test_pod_breaking_off_mid_stream_ends_the_sse_stream_with_an_error_event() -> None:
    pod = EmbeddedServer(_pod_breaking_off_mid_stream, "127.0.0.1", 0, "critical")
    port = await pod.start()
    try:
        async with serving(f"127.0.0.1:{port}") as gateway, client_of(gateway) as client:
            received = []
            async with client.stream("POST", "/v1/completions", json=completion("x", stream=True)) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line:
                        received.append(line)
            assert received[0] == "data: {}"  # what the pod sent got through, then a clear error and [DONE]
            error = orjson.loads(received[1].removeprefix("data: "))["error"]
            assert error["code"] == "upstream_aborted" and error["type"] == "api_error"
            assert received[2:] == ["data: [DONE]"]
            text = (await client.get("/metrics")).text
            assert metric_value(text, "epp_gateway_requests_total", result="upstream_aborted") == 1
            assert gateway.datastore.states()[0].in_flight == 0
    finally:
        await pod.stop()


SHEDDING_CONFIG = f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {{name: pool}}
spec: {{targetPortNumber: 8000, selector: {{app: vllm}}}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: live}}
spec: {{modelName: live, criticality: Critical, poolRef: {{name: pool}}, targetModels: [{{name: {MODEL}}}]}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: batch}}
spec: {{modelName: batch, criticality: Sheddable, poolRef: {{name: pool}}, targetModels: [{{name: {MODEL}}}]}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
metadata: {{name: shed-when-busy}}
saturationDetector: {{queueDepthThreshold: 5, kvCacheUtilThreshold: 0.001}}
plugins:
- type: saturation-filter
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: saturation-filter
  - pluginRef: max-score-picker
"""


async def test_sheddable_request_on_a_saturated_pool_is_429(tmp_path: Path) -> None:
    config = tmp_path / "shed.yaml"
    config.write_text(SHEDDING_CONFIG)
    async with (
        SimFleet(pods=1, profile="tiny", time_scale=0.2, log_level="critical") as fleet,
        serving(addresses(fleet), config=[str(config)]) as gateway,
        client_of(gateway) as client,
    ):
        state = gateway.datastore.states()[0]
        body = {**chat("keep the pod busy", max_tokens=500, stream=True), "model": "live"}
        async with client.stream("POST", "/v1/chat/completions", json=body) as busy:
            assert busy.status_code == 200

            async def saturated() -> bool:  # the pod's KV cache is in use, as scraped
                return state.metrics is not None and state.metrics.kv_cache_usage >= 0.001

            await wait_until(saturated, "the pod to report KV cache use")
            shed = await client.post("/v1/chat/completions", json={**chat("later"), "model": "batch"})
            assert_openai_error(shed, 429, "request_shed")
