"""Context-length clamping, empty prompts and token-id validation as in vLLM 0.32."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from bench.sim.fleet import SimFleet
from bench.sim.pod import SimPod
from bench.sim.profiles import get_profile
from bench.sim.protocol import parse_completion
from epp.tokenization.simulated import VOCAB_SIZE
from tests.test_sim_support import sse_json

MAX_LEN = 64


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with SimFleet(pods=1, profile="tiny", max_model_len=MAX_LEN) as fleet:
        yield fleet.urls[0]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
        yield c


def _assert_bad_request(r: httpx.Response, fragment: str) -> None:
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert fragment in error["message"]


async def test_max_tokens_beyond_the_context_is_clamped_and_finishes_with_length(url, client):
    r = await client.post(f"{url}/v1/completions", json={"prompt": list(range(40)), "max_tokens": 1000})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 40
    assert body["usage"]["completion_tokens"] == MAX_LEN - 40


async def test_streamed_chat_over_the_context_is_clamped_too(url, client):
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "stream": True}
    payload["stream_options"] = {"include_usage": True}
    r = await client.post(f"{url}/v1/chat/completions", json=payload)
    events = sse_json(r.text)
    finishes = [c["finish_reason"] for e in events for c in e.get("choices", []) if c["finish_reason"]]
    usage = events[-1]["usage"]
    assert finishes == ["length"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == MAX_LEN


async def test_a_prompt_longer_than_the_context_is_still_a_400(url, client):
    r = await client.post(f"{url}/v1/completions", json={"prompt": list(range(MAX_LEN + 1)), "max_tokens": 1})
    _assert_bad_request(r, f"maximum context length is {MAX_LEN} tokens")
    assert f"your prompt contains {MAX_LEN + 1} input tokens" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "input_tokens"
    text = await client.post(f"{url}/v1/completions", json={"prompt": "word " * 200})
    _assert_bad_request(text, f"contains at least {MAX_LEN + 1} input tokens")  # tokenised up to limit + 1


async def test_a_prompt_that_fills_the_context_exactly_is_the_engines_400(url, client):
    r = await client.post(f"{url}/v1/completions", json={"prompt": list(range(MAX_LEN))})
    _assert_bad_request(
        r, f"The decoder prompt (length {MAX_LEN}) plus the number of requested output tokens"
    )


async def test_empty_prompt_is_a_400_without_bos(url, client):
    _assert_bad_request(await client.post(f"{url}/v1/completions", json={"prompt": ""}), "cannot be empty")
    _assert_bad_request(await client.post(f"{url}/v1/completions", json={"prompt": [""]}), "cannot be empty")


async def test_empty_prompt_is_one_bos_token_with_a_bos_adding_tokenizer():
    pod = SimPod(replace(get_profile("tiny"), bos_token_id=1))
    stream = pod.submit(parse_completion(b'{"prompt": "", "max_tokens": 2}'))
    assert stream.request.prompt_ids == [1]


async def test_cpu_tiny_refuses_ids_beyond_the_tiny_models_vocabulary(client):
    async with SimFleet(pods=1, profile="cpu-tiny") as fleet:
        r = await client.post(f"{fleet.urls[0]}/v1/completions", json={"prompt": [5, 1024]})
    _assert_bad_request(r, "Token id 1024 is out of vocabulary")


@pytest.mark.parametrize("token", [VOCAB_SIZE, 2**32, 2**32 + 5, 2**63, -1])
async def test_token_ids_out_of_vocabulary_are_a_400_never_a_500(url, client, token):
    r = await client.post(f"{url}/v1/completions", json={"prompt": [1, token], "max_tokens": 1})
    _assert_bad_request(r, f"Token id {token} is out of vocabulary")
    ok = await client.post(f"{url}/v1/completions", json={"prompt": [1, VOCAB_SIZE - 1], "max_tokens": 1})
    assert ok.status_code == 200  # the pod is still serving


async def test_ids_beyond_64_bits_are_a_400_too(url, client):
    body = b'{"prompt": [1, 18446744073709551616], "max_tokens": 1}'  # orjson reads it as a float
    r = await client.post(f"{url}/v1/completions", content=body, headers={"content-type": "application/json"})
    _assert_bad_request(r, "prompt")
