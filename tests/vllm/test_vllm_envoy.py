"""A real Envoy with `epp serve` as its ext_proc picker in front of the two real vLLM CPU pods."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from bench.envoy_stack.stack import EnvoyStack, StackOptions
from tests.vllm.conftest import Pods
from tests.vllm.pods import ADAPTER, BLOCK_SIZE, MODEL
from tests.vllm.support import completion, metric, poll, prefix_hits, words

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]

SERVED_BY = "x-epp-endpoint"  # Envoy's route adds it with the upstream address


@pytest.fixture(scope="module")
def stack(pods: Pods) -> Iterator[EnvoyStack]:
    options = StackOptions(strategy="PREFIX_CACHE", serve_args=("--seed", "1"), startup_timeout_s=60)
    with EnvoyStack(pods.addresses, options) as stack:
        yield stack


def test_envoy_routes_to_real_pods_and_epp_scrapes_them(stack: EnvoyStack, pods: Pods) -> None:
    def all_schedulable() -> bool:
        return all(metric(stack.epp_url, "epp_endpoint_schedulable", endpoint=a) == 1 for a in pods.addresses)

    poll(all_schedulable, "epp serve to scrape both pods")
    with httpx.Client(base_url=stack.base_url, timeout=60, trust_env=False) as client:
        answer = client.post("/v1/completions", json=completion("hello there"))
        assert answer.status_code == 200, answer.text
        assert answer.headers[SERVED_BY] in pods.addresses
        adapter = client.post("/v1/completions", json=completion("hello there", model=ADAPTER))
        assert adapter.status_code == 200, adapter.text
        assert adapter.json()["model"] == ADAPTER
        models = client.get("/v1/models")
        assert models.status_code == 200
        assert {m["id"] for m in models.json()["data"]} == {MODEL, ADAPTER}


def test_envoy_prefix_sticks_to_one_pod(stack: EnvoyStack, pods: Pods) -> None:
    shared = words(2, 3 * BLOCK_SIZE)
    before = {u: prefix_hits(u) for u in pods.urls}
    with httpx.Client(base_url=stack.base_url, timeout=60, trust_env=False) as client:
        served = []
        for i in range(5):
            answer = client.post("/v1/completions", json=completion(f"{shared} r{i}"))
            assert answer.status_code == 200, answer.text
            served.append(answer.headers[SERVED_BY])
    assert len(set(served)) == 1, served
    gained = {u: prefix_hits(u) - before[u] for u in pods.urls}
    assert gained[f"http://{served[0]}"] >= 4 * BLOCK_SIZE, gained
    assert all(g == 0 for u, g in gained.items() if u != f"http://{served[0]}"), gained


def test_envoy_streams_with_usage(stack: EnvoyStack) -> None:
    body = completion("once upon", max_tokens=10, ignore_eos=True, stream=True)
    body["stream_options"] = {"include_usage": True}
    with (
        httpx.Client(base_url=stack.base_url, timeout=60, trust_env=False) as client,
        client.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert orjson.loads(events[-2])["usage"]["completion_tokens"] == 10
