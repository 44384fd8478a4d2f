"""A real Envoy with `epp serve` as its ext_proc picker, in front of simulated pods, over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.sim.process import SimProcess
from tests.test_envoy_support import MODEL, addresses, chat_body, metric_sum, poll, served, sim_pods

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with sim_pods(3) as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(sim: SimProcess) -> Iterator[EnvoyStack]:
    # PREFIX_CACHE, not the default: its affinity holds for back-to-back requests, which PREFIX_TOKENS's
    # hot-prefix rule spreads here (the access log reports each end up to 50 ms late; docs/epp.md).
    options = StackOptions(strategy="PREFIX_CACHE", serve_args=("--seed", "1"))
    with EnvoyStack(addresses(sim), options) as stack:
        yield stack


@pytest.fixture
def client(stack: EnvoyStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30, trust_env=False) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def in_flight(stack: EnvoyStack) -> float:
    return metric_sum(stack.epp_url, "epp_endpoint_in_flight_requests")


def test_chat_and_completions(client: httpx.Client) -> None:
    chat = client.post("/v1/chat/completions", json=chat_body("hello there"))
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"
    completion = client.post("/v1/completions", json={"model": MODEL, "prompt": "once upon", "max_tokens": 4})
    assert completion.status_code == 200
    assert completion.json()["usage"]["completion_tokens"] == 4
    models = client.get("/v1/models")  # bodyless: routed on the request headers
    assert models.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == [MODEL]


def test_stream_arrives_before_the_generation_ends(
    client: httpx.Client, stack: EnvoyStack, sim: SimProcess
) -> None:
    """Envoy must not buffer SSE: the first event arrives while the pod is still generating."""
    body = chat_body("tell me a long story", max_tokens=150, stream=True)
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert orjson.loads(first.removeprefix("data: "))["object"] == "chat.completion.chunk"
        still_running = sum(metric_sum(url, "vllm:num_requests_running") for url in sim.urls)
        assert still_running == 1
        assert in_flight(stack) == 1  # epp counts it until the response ends
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert len(rest) > 100
    poll(lambda: in_flight(stack) == 0, "epp to release the finished stream")


def test_streamed_completion(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "count", "max_tokens": 6, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    texts = [orjson.loads(e.removeprefix("data: "))["choices"][0]["text"] for e in events[:-1]]
    assert len(texts) == 6


def test_openai_sdk_works_unmodified(stack: EnvoyStack) -> None:
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="sk-test", max_retries=0)
    chat = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 3
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 4
    completion = sdk.completions.create(model=MODEL, prompt="abc", max_tokens=2)
    assert completion.choices[0].text
    assert [m.id for m in sdk.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


def test_shared_prefix_sticks_to_one_pod(client: httpx.Client, sim: SimProcess) -> None:
    prefix = "You are a careful assistant for the travel desk. " * 12
    before = served(sim.urls)
    for i in range(6):
        response = client.post("/v1/chat/completions", json=chat_body(f"{prefix} Question {i}: where to?"))
        assert response.status_code == 200
    after = served(sim.urls)
    deltas = [round(a - b) for a, b in zip(after, before, strict=True)]
    assert sorted(deltas) == [0, 0, 6], deltas


def test_malformed_json_is_a_400_json_error(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"


def test_unknown_model_is_a_404_json_error(client: httpx.Client) -> None:
    # No InferenceModel configured: the name passes through epp and the pod answers as vLLM does.
    response = client.post("/v1/chat/completions", json={**chat_body("x"), "model": "gpt-unknown"})
    assert response.status_code == 404
    assert "gpt-unknown" in error_of(response)["message"]


def test_oversize_body_is_a_413_json_error(client: httpx.Client, stack: EnvoyStack) -> None:
    body = orjson.dumps(chat_body("a" * (11 * 1024 * 1024)))
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"
    assert client.post("/v1/chat/completions", json=chat_body("still fine")).status_code == 200


def test_chunked_request_body_is_routed(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        data = orjson.dumps(chat_body("sent in pieces"))
        yield data[:10]
        yield data[10:]

    response = client.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"


def test_in_flight_counts_return_to_zero(client: httpx.Client, stack: EnvoyStack) -> None:
    for i in range(3):
        assert client.post(
            "/v1/completions", json={"model": MODEL, "prompt": f"p{i}", "max_tokens": 2}
        ).is_success
    poll(lambda: in_flight(stack) == 0, "in-flight counts back to 0")
    assert metric_sum(stack.epp_url, "epp_decisions_total", result="ok") >= 3
