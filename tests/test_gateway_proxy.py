"""The gateway in front of simulated pods: JSON and SSE, upstream errors, disconnects, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from bench.sim.fleet import SimFleet
from gateway.server import Gateway
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
from tests.test_sim_support import sse_json

POD_HEADER = ENDPOINT_HEADER.decode()


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(pods=2, profile="tiny", time_scale=20.0, log_level="critical") as f:
        yield f


@pytest.fixture
async def gateway(fleet: SimFleet) -> AsyncIterator[Gateway]:
    async with serving(addresses(fleet), strategy="ROUND_ROBIN") as gw:
        yield gw


async def test_chat_and_completions_json(gateway: Gateway) -> None:
    pods = {e.name for e in gateway.datastore.endpoints()}
    async with client_of(gateway) as client:
        r = await client.post("/v1/chat/completions", json=chat("hello there", max_tokens=3))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["usage"]["completion_tokens"] == 3
        assert r.headers[POD_HEADER] in pods
        r = await client.post("/v1/completions", json=completion("once upon", max_tokens=5))
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "text_completion" and r.json()["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("path", "body", "obj"),
    [
        ("/v1/chat/completions", chat("stream me", max_tokens=6, stream=True), "chat.completion.chunk"),
        ("/v1/completions", completion("stream me", max_tokens=6, stream=True), "text_completion"),
    ],
)
async def test_streaming_relays_every_sse_event(
    gateway: Gateway, path: str, body: dict[str, object], obj: str
) -> None:
    async with client_of(gateway) as client:
        r = await client.post(path, json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_json(r.text)  # well-formed framing ending in [DONE]
    assert {c["object"] for c in chunks} == {obj}
    assert sum(1 for c in chunks for choice in c["choices"] if choice.get("finish_reason")) == 1


async def test_stream_chunks_reach_the_client_while_the_pod_still_generates() -> None:
    async with (
        SimFleet(pods=1, profile="tiny", time_scale=0.2, log_level="critical") as fleet,
        serving(addresses(fleet)) as gateway,
        client_of(gateway) as client,
    ):
        body = completion("slow stream", max_tokens=200, stream=True)
        async with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            first = await anext(r.aiter_lines())
            assert first.startswith("data: {")
            # The pod is still generating: the first event was passed on before the end.
            state = (await client.get(f"{fleet.urls[0]}/sim/state")).json()
            assert len(state["running"]) == 1


async def test_upstream_error_status_and_body_are_forwarded(fleet: SimFleet, gateway: Gateway) -> None:
    for pod in fleet.pods:
        pod.fault.set("error", status=500)
    async with client_of(gateway) as client:
        direct = await client.post(f"{fleet.urls[0]}/v1/completions", json=completion("x"))
        r = await client.post("/v1/completions", json=completion("x"))
        text = (await client.get("/metrics")).text
    assert r.status_code == 500
    assert r.content == direct.content  # the pod's own error body, untouched
    # A 5xx before any byte reached the client is retried once elsewhere; the last pod's answer is final.
    assert metric_value(text, "epp_retries_total", reason="http_5xx") == 1
    assert metric_value(text, "epp_endpoint_attempts_total", outcome="http_5xx") == 2


async def test_client_disconnect_frees_in_flight_and_aborts_upstream() -> None:
    async with (
        SimFleet(pods=1, profile="tiny", time_scale=0.2, log_level="critical") as fleet,
        serving(addresses(fleet)) as gateway,
        client_of(gateway) as client,
    ):
        state = gateway.datastore.states()[0]
        body = chat("never mind", max_tokens=500, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            await anext(r.aiter_lines())
            assert state.in_flight == 1
        # Leaving the block closed the connection mid-stream.

        async def released() -> bool:
            return state.in_flight == 0

        await wait_until(released, "the in-flight count to drop")

        async def aborted() -> bool:
            pod = (await client.get(f"{fleet.urls[0]}/sim/state")).json()
            return not pod["running"] and pod["counters"]["aborted"] == 1

        await wait_until(aborted, "the pod to abort the request")
        text = (await client.get("/metrics")).text
        assert metric_value(text, "epp_gateway_requests_total", result="client_disconnected") == 1


async def test_client_giving_up_before_any_answer_frees_in_flight(fleet: SimFleet, gateway: Gateway) -> None:
    for pod in fleet.pods:
        pod.fault.set("hang")  # pods hold the request without answering
    async with client_of(gateway) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/completions", json=completion("anyone?"), timeout=0.3)

        async def released() -> bool:
            return all(s.in_flight == 0 for s in gateway.datastore.states())

        await wait_until(released, "the in-flight count to drop")
        text = (await client.get("/metrics")).text
    assert metric_value(text, "epp_gateway_requests_total", status="499", result="client_disconnected") == 1


async def test_models_is_the_deduplicated_union_of_the_pods_models() -> None:
    async with (
        SimFleet(pods=2, profile="tiny", served_model_name="m-a", lora_modules=("ad-1",)) as a,
        SimFleet(pods=1, profile="tiny", served_model_name="m-b", lora_modules=("ad-1",)) as b,
        serving(addresses(a, b)) as gateway,
        client_of(gateway) as client,
    ):
        r = await client.get("/v1/models")
        assert r.status_code == 200
        ids = [m["id"] for m in r.json()["data"]]
        assert sorted(ids) == ["ad-1", "m-a", "m-b"]
        adapter = await client.post("/v1/completions", json={**completion("hi"), "model": "ad-1"})
        assert adapter.status_code == 200, adapter.text
        missing = await client.post("/v1/completions", json={**completion("hi"), "model": "m-c"})
        assert_openai_error(missing, 404, "model_not_found")


async def test_inference_model_names_are_known_and_rewritten(fleet: SimFleet, tmp_path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\n"
        "metadata: {name: pool}\nspec: {targetPortNumber: 8000, selector: {app: vllm}}\n---\n"
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\n"
        "metadata: {name: friendly}\n"
        "spec: {modelName: friendly, poolRef: {name: pool}, "
        f"targetModels: [{{name: {MODEL}, weight: 1}}]}}\n"
    )
    async with serving(addresses(fleet), config=[str(config)]) as gateway, client_of(gateway) as client:
        r = await client.post("/v1/chat/completions", json={**chat("hi"), "model": "friendly"})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == MODEL  # the pod ran the target model
        assert_openai_error(
            await client.post("/v1/chat/completions", json={**chat("hi"), "model": "other"}), 404
        )


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b'{"model": "sim/tiny", "messages": [', 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_body"),
        (b"", 400, "invalid_body"),
        (b'{"model": "sim/tiny"}', 400, None),
        (orjson.dumps(chat("hi", stream="yes")), 400, None),
        (orjson.dumps({**chat("hi"), "model": "no-such-model"}), 404, "model_not_found"),
        (orjson.dumps(chat("x" * 5000)), 413, "body_too_large"),
    ],
)
async def test_bad_requests_get_openai_json_errors(
    fleet: SimFleet, content: bytes, status: int, code: str | None
) -> None:
    async with serving(addresses(fleet), max_body_bytes=4096) as gateway, client_of(gateway) as client:
        r = await client.post("/v1/chat/completions", content=content)
        assert_openai_error(r, status, code)
        text = (await client.get("/metrics")).text
        assert metric_value(text, "epp_gateway_requests_total", status=str(status), result="refused") == 1


async def test_wrong_route_and_method_are_json_errors(gateway: Gateway) -> None:
    async with client_of(gateway) as client:
        assert_openai_error(await client.get("/v1/chat/completions"), 405)
        assert_openai_error(await client.post("/v1/models"), 405)
        assert_openai_error(await client.get("/v1/embeddings"), 404)
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["schedulable_endpoints"] == 2


async def test_records_metrics_and_one_access_line_without_secrets(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    secret = "sk-gateway-test-0123456789"
    async with client_of(gateway) as client:
        r = await client.post(
            "/v1/chat/completions",
            json=chat("metrics please", stream=True),
            headers={"authorization": f"Bearer {secret}", "x-request-id": "req-42"},
        )
        assert r.status_code == 200
        text = (await client.get("/metrics")).text
    pod = r.headers[POD_HEADER]
    route = "/v1/chat/completions"
    assert metric_value(text, "epp_gateway_requests_total", route=route, status="200", endpoint=pod) == 1
    assert metric_value(text, "llm_d_epp_request_ttft_seconds_count") == 1
    assert metric_value(text, "llm_d_epp_request_duration_seconds_count") == 1
    assert metric_value(text, "gen_ai_server_request_duration_seconds_count", error_type="") == 1
    # epp's own metrics are there too
    assert metric_value(text, "llm_d_epp_scheduler_attempts_total", status="success", endpoint_name=pod) == 1
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "gateway.access"]
    assert len(lines) == 1
    assert "request_id=req-42" in lines[0] and f"endpoint={pod}" in lines[0] and "status=200" in lines[0]
    assert "ttft_ms=" in lines[0] and "strategy=ROUND_ROBIN" in lines[0]
    assert secret not in caplog.text


async def test_no_reachable_endpoint_is_503() -> None:
    from tests.test_serve_support import free_port

    async with (
        serving(f"127.0.0.1:{free_port()}", wait_scraped=False) as gateway,
        client_of(gateway) as client,
    ):
        assert_openai_error(await client.post("/v1/completions", json=completion("hi")), 503, "no_endpoint")
        assert_openai_error(await client.get("/v1/models"), 503, "no_endpoint")


async def test_concurrent_requests_all_complete_and_release(gateway: Gateway) -> None:
    async with client_of(gateway) as client:
        bodies = [completion(f"prompt {i}", max_tokens=3, stream=i % 2 == 0) for i in range(12)]
        replies = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
    assert [r.status_code for r in replies] == [200] * 12
    assert all(s.in_flight == 0 for s in gateway.datastore.states())
