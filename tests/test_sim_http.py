"""The simulator over HTTP on loopback: prefix caching, eviction, load, OpenAI protocol and errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from bench.sim.fleet import SimFleet
from tests.test_sim_support import prompt, scrape, sse_json

TTFT_SUM = "vllm:time_to_first_token_seconds_sum"
HITS = "vllm:prefix_cache_hits_total"


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(pods=1, profile="tiny", time_scale=2.0) as f:
        yield f


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as c:
        yield c


async def _complete_and_measure(client: httpx.AsyncClient, url: str, text: str) -> tuple[float, float]:
    """(simulated TTFT from the TTFT histogram sum, prefix cache hit tokens) of one request."""
    before = await scrape(client, url)
    r = await client.post(f"{url}/v1/completions", json={"prompt": text, "max_tokens": 1})
    assert r.status_code == 200
    after = await scrape(client, url)
    return after[TTFT_SUM] - before[TTFT_SUM], after[HITS] - before[HITS]


async def test_repeated_prompt_hits_prefix_cache_then_eviction_undoes_it(fleet, client):
    url = fleet.urls[0]
    text = prompt(1)
    cold_ttft, cold_hits = await _complete_and_measure(client, url, text)
    warm_ttft, warm_hits = await _complete_and_measure(client, url, text)
    assert cold_hits == 0 and warm_hits > 0
    assert warm_ttft < cold_ttft / 2
    # Two other long prompts need the whole tiny KV cache: the first prompt's blocks get evicted.
    for topic in (2, 3):
        await _complete_and_measure(client, url, prompt(topic))
    evicted_ttft, evicted_hits = await _complete_and_measure(client, url, text)
    assert evicted_hits == 0
    assert evicted_ttft > warm_ttft * 2


async def test_queue_and_kv_usage_rise_under_load_and_fall_after(fleet, client):
    url = fleet.urls[0]
    jobs = [
        asyncio.create_task(
            client.post(f"{url}/v1/completions", json={"prompt": prompt(i, 60), "max_tokens": 60})
        )
        for i in range(10)
    ]
    peak = {"waiting": 0.0, "running": 0.0, "kv": 0.0}
    while not all(j.done() for j in jobs):
        m = await scrape(client, url)
        peak["waiting"] = max(peak["waiting"], m["vllm:num_requests_waiting"])
        peak["running"] = max(peak["running"], m["vllm:num_requests_running"])
        peak["kv"] = max(peak["kv"], m["vllm:kv_cache_usage_perc"])
        await asyncio.sleep(0.01)
    assert all(j.result().status_code == 200 for j in jobs)
    assert peak["running"] == 4  # the tiny profile's max_num_seqs
    assert peak["waiting"] > 0 and peak["kv"] > 0
    m = await scrape(client, url)
    assert m["vllm:num_requests_waiting"] == 0 and m["vllm:num_requests_running"] == 0
    assert m["vllm:kv_cache_usage_perc"] == 0
    assert m["vllm:request_success_total{finished_reason=length}"] == 10


async def test_non_streaming_responses_have_openai_shape(fleet, client):
    url = fleet.urls[0]
    r = await client.post(f"{url}/v1/completions", json={"prompt": "Say hello", "max_tokens": 5})
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "sim/tiny" and isinstance(body["created"], int)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5
    assert len(body["choices"][0]["text"].split()) == 5
    r = await client.post(f"{url}/v1/completions", json={"prompt": "Say hello"})
    assert r.json()["usage"]["completion_tokens"] == 16  # vLLM's default max_tokens for completions
    chat = {"messages": [{"role": "user", "content": "Tell me a story"}]}
    body = (await client.post(f"{url}/v1/chat/completions", json=chat)).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "stop"  # no max_tokens: the answer ends by itself
    again = (await client.post(f"{url}/v1/chat/completions", json=chat)).json()
    assert again["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]


@pytest.mark.parametrize("chat", [True, False])
async def test_streaming_is_well_formed_sse_with_usage(fleet, client, chat):
    url = fleet.urls[0]
    path = "/v1/chat/completions" if chat else "/v1/completions"
    payload: dict[str, object] = {"max_tokens": 7, "stream": True, "stream_options": {"include_usage": True}}
    payload |= {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"}
    r = await client.post(f"{url}{path}", json=payload)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_json(r.text)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 7
    body = chunks[:-1]
    assert len({c["id"] for c in chunks}) == 1
    if chat:
        assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        texts = [c["choices"][0]["delta"]["content"] for c in body[1:]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    else:
        texts = [c["choices"][0]["text"] for c in body]
    assert len(texts) == 7
    assert [c["choices"][0]["finish_reason"] for c in body][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in body[:-1])


async def test_multi_turn_chat_reuses_previous_rounds(fleet, client):
    url = fleet.urls[0]
    history = [{"role": "system", "content": prompt(7, 150)}, {"role": "user", "content": "first question"}]
    r = await client.post(f"{url}/v1/chat/completions", json={"messages": history, "max_tokens": 8})
    answer = r.json()["choices"][0]["message"]["content"]
    history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "second question"}]
    before = await scrape(client, url)
    await client.post(f"{url}/v1/chat/completions", json={"messages": history, "max_tokens": 8})
    after = await scrape(client, url)
    assert after[HITS] - before[HITS] >= 150  # the system prompt and first round were cached


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b"[1, 2]"),
        ("/v1/chat/completions", b'{"max_tokens": 5}'),
        ("/v1/chat/completions", b'{"messages": "hello"}'),
        ("/v1/chat/completions", b'{"messages": []}'),
        ("/v1/chat/completions", b'{"messages": [{"content": "no role"}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}'),
        ("/v1/completions", b'{"max_tokens": 5}'),
        ("/v1/completions", b'{"prompt": 42}'),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}'),
        ("/v1/completions", b'{"prompt": ""}'),  # the tiny profile adds no BOS: an empty decoder prompt
        ("/v1/completions", b'{"prompt": [4294967296]}'),
        ("/v1/completions", b""),
    ],
)
async def test_bad_requests_get_openai_style_400(fleet, client, path, body):
    r = await client.post(
        f"{fleet.urls[0]}{path}", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and err["message"]


async def test_unknown_model_and_route_get_404(fleet, client):
    url = fleet.urls[0]
    r = await client.post(f"{url}/v1/completions", json={"model": "x", "prompt": "hi"})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `x` does not exist. Valid aliases: sim/tiny.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    assert (await client.get(f"{url}/nope")).status_code == 404
    assert (await client.get(f"{url}/v1/completions")).status_code == 405


async def test_chunked_request_body_from_raw_socket(fleet):
    endpoint = fleet.endpoints[0]
    body = b'{"prompt": "hello there", "max_tokens": 3}'
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:25], body[25:]))
    writer.write(head + chunks + b"0\r\n\r\n")
    await writer.drain()
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert b'"completion_tokens":3' in response


async def test_health_and_models(client):
    async with SimFleet(
        pods=2, profile="tiny", lora_modules=("travel-helper-v1",), served_model_name="/model/q"
    ) as f:
        assert len(set(f.urls)) == 2
        for url in f.urls:
            r = await client.get(f"{url}/health")
            assert r.status_code == 200 and r.content == b""
            models = (await client.get(f"{url}/v1/models")).json()["data"]
            assert [m["id"] for m in models] == ["/model/q", "travel-helper-v1"]
            assert models[0]["parent"] is None and models[1]["parent"] == "/model/q"
