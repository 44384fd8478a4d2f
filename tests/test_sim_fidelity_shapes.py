"""Response shapes a client or router sees, as vLLM 0.32 gives them: errors, /v1/models, bodies, /health."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from bench.sim.fleet import SimFleet
from tests.test_sim_support import prompt, sse_json

MODEL_FIELDS = {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}
CHAT_FIELDS = (
    *("id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage"),
    *("prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params"),
    "metrics",
)
COMPLETION_FIELDS = (
    *("id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage"),
    *("kv_transfer_params", "ec_transfer_params", "metrics"),
)
PERMISSION_FIELDS = {
    "id",
    "object",
    "created",
    "allow_create_engine",
    "allow_sampling",
    "allow_logprobs",
    "allow_search_indices",
    "allow_view",
    "allow_fine_tuning",
    "organization",
    "group",
    "is_blocking",
}


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(pods=1, profile="tiny", lora_modules=("tiny-lora",)) as f:
        yield f


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
        yield c


async def test_models_list_has_vllm_model_cards(fleet, client):
    data = (await client.get(f"{fleet.urls[0]}/v1/models")).json()["data"]
    base, adapter = data
    for card in data:
        assert set(card) == MODEL_FIELDS and card["owned_by"] == "vllm"
        (permission,) = card["permission"]
        assert set(permission) == PERMISSION_FIELDS and permission["object"] == "model_permission"
        assert permission["id"].startswith("modelperm-")
    assert (base["root"], base["parent"], base["max_model_len"]) == ("sim/tiny", None, 1024)
    assert (adapter["id"], adapter["parent"], adapter["max_model_len"]) == ("tiny-lora", "sim/tiny", None)


async def test_chat_and_completion_bodies_carry_vllm_fields(fleet, client):
    url = fleet.urls[0]
    chat = await client.post(
        f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    body = chat.json()
    assert body["system_fingerprint"] == fleet.pods[0].system_fingerprint and body["service_tier"] is None
    assert re.fullmatch(
        r"vllm-0\.32\.0-[0-9a-f]{8}", body["system_fingerprint"]
    )  # vLLM's default "full" mode
    choice = body["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)
    assert choice["message"]["tool_calls"] == [] and choice["message"]["refusal"] is None
    assert list(body) == [*CHAT_FIELDS]  # a full model_dump of vLLM 0.32's ChatCompletionResponse
    assert (
        body["usage"]["prompt_tokens_details"] is None
    )  # vLLM's default (no --enable-prompt-tokens-details)
    text = (await client.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})).json()
    assert text["object"] == "text_completion" and text["choices"][0]["stop_reason"] is None
    assert text["system_fingerprint"] == body["system_fingerprint"] and list(text) == [*COMPLETION_FIELDS]


async def test_last_streamed_chat_chunk_has_stop_reason(fleet, client):
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    events = sse_json((await client.post(f"{fleet.urls[0]}/v1/chat/completions", json=payload)).text)
    last = events[-1]["choices"][0]
    assert (last["finish_reason"], last["stop_reason"]) == ("length", None)
    assert all("stop_reason" not in e["choices"][0] for e in events[:-1])
    # The fingerprint rides on the terminal chunk, or on the usage chunk when one follows.
    assert [("system_fingerprint" in e) for e in events] == [False] * (len(events) - 1) + [True]
    with_usage = payload | {"stream_options": {"include_usage": True}}
    events = sse_json((await client.post(f"{fleet.urls[0]}/v1/chat/completions", json=with_usage)).text)
    assert [("system_fingerprint" in e) for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1]["choices"] == [] and "usage" in events[-1]
    assert events[0]["prompt_token_ids"] is None and "prompt_token_ids" not in events[1]


async def test_prompt_tokens_details_report_cached_tokens_when_enabled(client):
    async with SimFleet(pods=1, profile="tiny", enable_prompt_tokens_details=True) as fleet:
        url = fleet.urls[0]
        body = {"prompt": prompt(3, 100), "max_tokens": 1}
        cold = (await client.post(f"{url}/v1/completions", json=body)).json()["usage"]
        warm = (await client.post(f"{url}/v1/completions", json=body)).json()["usage"]
    assert cold["prompt_tokens_details"] == {
        "cached_tokens": 0,
        "created_cache_tokens": None,
        "multimodal_tokens": None,
    }
    assert warm["prompt_tokens_details"]["cached_tokens"] == (warm["prompt_tokens"] - 1) // 16 * 16


async def test_error_bodies_have_vllm_shape(fleet, client):
    url = fleet.urls[0]
    r = await client.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `nope` does not exist. Valid aliases: sim/tiny.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    r = await client.post(f"{url}/v1/completions", json={"prompt": 42})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    # Unknown routes and wrong methods: FastAPI's own answers.
    assert (await client.get(f"{url}/v2/nothing")).json() == {"detail": "Not Found"}
    r = await client.get(f"{url}/v1/completions")
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})


async def test_health_is_an_empty_200_without_content_type(fleet, client):
    r = await client.get(f"{fleet.urls[0]}/health")
    assert (r.status_code, r.content) == (200, b"")
    assert "content-type" not in r.headers and r.headers["content-length"] == "0"
