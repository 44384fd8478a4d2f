"""Failures behind Envoy: a pod killed mid-run, epp down (fail open / fail closed), models epp refuses."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.sim.process import SimProcess
from tests.test_envoy_support import MODEL, addresses, chat_body, envoy_stat, metric_sum, poll, sim_pods

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pod() -> Iterator[SimProcess]:
    with sim_pods(1, time_scale=20) as sim:
        yield sim


def test_killed_pod_costs_no_request_without_response_bytes() -> None:
    """SIGKILL a pod mid-generation: its requests (no byte sent yet) and later ones are retried elsewhere.

    Streams that already received bytes from it may be cut, but must end (no hang)."""
    sims = [sim_pods(1) for _ in range(3)]
    try:
        for sim in sims:
            sim.start()
        victim = sims[1]
        with EnvoyStack(addresses(*sims), StackOptions(serve_args=("--seed", "1"))) as stack:
            statuses, streams = asyncio.run(_load_while_killing(stack.base_url, victim))
            retried = envoy_stat(stack.admin_url, "cluster.inference_pool.upstream_rq_retry_success")
    finally:
        for sim in sims:
            sim.stop()
    assert statuses == [200] * len(statuses)
    assert retried >= 1  # the victim really had requests in flight when it died
    assert set(streams) <= {"done", "cut"}, streams


async def _load_while_killing(base_url: str, victim: SimProcess) -> tuple[list[int], list[str]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60, trust_env=False) as client:

        async def one(i: int) -> int:
            body = {"model": MODEL, "prompt": f"request {i} " * 5, "max_tokens": 100}
            return (await client.post("/v1/completions", json=body)).status_code

        async def stream(i: int) -> str:
            body = {"model": MODEL, "prompt": f"stream {i} " * 5, "max_tokens": 100, "stream": True}
            try:
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    lines = [line async for line in response.aiter_lines()]
            except (httpx.RemoteProtocolError, httpx.ReadError):  # cut: Envoy closes the client connection
                return "cut"  # (a timeout is not caught: a hung stream fails the test)
            return "done" if "data: [DONE]" in lines else "cut"

        first = [asyncio.create_task(one(i)) for i in range(12)]
        streams = [asyncio.create_task(stream(i)) for i in range(3)]

        def victim_busy() -> bool:
            return metric_sum(victim.urls[0], "vllm:num_requests_running") > 0

        await asyncio.to_thread(poll, victim_busy, "the victim pod to run a request")
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        later = [asyncio.create_task(one(100 + i)) for i in range(12)]
        statuses = list(await asyncio.gather(*first, *later))
        return statuses, list(await asyncio.gather(*streams))


MODELS_CONFIG = f"""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {{name: pool}}
spec:
  targetPortNumber: 8000
  selector: {{app: vllm}}
  extensionRef: {{name: epp, failureMode: FailOpen}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: base}}
spec:
  modelName: {MODEL}
  poolRef: {{name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: alias}}
spec:
  modelName: friendly-name
  poolRef: {{name: pool}}
  targetModels: [{{name: {MODEL}, weight: 1}}]
"""


def test_fail_closed_when_epp_is_down(pod: SimProcess) -> None:
    with (
        EnvoyStack(addresses(pod), StackOptions(fail_open=False)) as stack,
        httpx.Client(base_url=stack.base_url, timeout=30, trust_env=False) as client,
    ):
        assert client.post("/v1/chat/completions", json=chat_body("up")).status_code == 200
        assert stack.epp is not None
        stack.epp.stop()
        response = client.post("/v1/chat/completions", json=chat_body("down"))
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "endpoint_picker_unavailable"


def test_fail_open_from_the_pool_config(pod: SimProcess, tmp_path: Path) -> None:
    """The pool's failureMode FailOpen applies; while epp runs it refuses unknown models, rewrites aliases."""
    config = tmp_path / "pool.yaml"
    config.write_text(MODELS_CONFIG)
    options = StackOptions(config_paths=[str(config)])
    with (
        EnvoyStack(addresses(pod), options) as stack,
        httpx.Client(base_url=stack.base_url, timeout=30, trust_env=False) as client,
    ):
        assert stack.pool.fail_open
        refused = client.post("/v1/chat/completions", json={**chat_body("x"), "model": "not-configured"})
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "model_not_found"  # epp's answer: the pod never saw it
        rewritten = client.post("/v1/chat/completions", json={**chat_body("x"), "model": "friendly-name"})
        assert (
            rewritten.status_code == 200
        )  # epp replaced the body (and content-length) with the target model
        assert rewritten.json()["model"] == MODEL
        before = metric_sum(pod.urls[0], "vllm:request_success_total")
        assert stack.epp is not None
        stack.epp.stop()
        for _ in range(3):
            response = client.post("/v1/chat/completions", json=chat_body("epp is down"))
            assert response.status_code == 200
        assert metric_sum(pod.urls[0], "vllm:request_success_total") == before + 3


def test_epp_errors_keep_their_json(pod: SimProcess) -> None:
    """epp's own 503 (no schedulable pod) reaches the client as epp wrote it, not as Envoy's generic error."""
    with EnvoyStack(["127.0.0.1:9"], StackOptions(fail_open=False, wait_for_pods=False)) as stack:
        response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=chat_body("x"), timeout=30)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_endpoint"
