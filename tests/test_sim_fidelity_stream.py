"""Streaming timing and disconnects as in vLLM 0.32: first byte with the first token, aborts uncounted."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import httpx
import orjson

from bench.sim.app import PodApp
from bench.sim.fleet import SimFleet
from bench.sim.pod import SimPod
from bench.sim.profiles import get_profile
from tests.test_sim_support import prompt, scrape


async def _stream_chat_directly(pod: SimPod) -> list[tuple[bytes, int]]:
    """Body chunks of one streamed chat answer with the pod's generated-token count when each went out."""
    app = PodApp(pod)
    request = orjson.dumps(
        {"messages": [{"role": "user", "content": prompt(1, 300)}], "max_tokens": 3, "stream": True}
    )
    delivered = False
    sent: list[tuple[bytes, int]] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append((message["body"], pod.engine.stats.generation_tokens))

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    await app(scope, receive, send)
    return sent


async def test_role_chunk_goes_out_with_the_first_token_not_before_any_work() -> None:
    pod = SimPod(get_profile("tiny"))
    pod.start()
    try:
        sent = await _stream_chat_directly(pod)
    finally:
        await pod.stop()
    role_body, tokens_then = sent[0]
    assert b'"role":"assistant"' in role_body
    assert tokens_then >= 1  # the first body byte leaves only once the engine produced a token
    assert b'"content":"' in sent[1][0] and b'"role"' not in sent[1][0]
    assert sent[-1][0] == b"data: [DONE]\n\n"


async def test_client_disconnect_frees_the_request_but_is_not_counted_as_abort() -> None:
    async with SimFleet(pods=1, profile="tiny") as fleet, httpx.AsyncClient(trust_env=False) as client:
        url = fleet.urls[0]
        body = {"prompt": prompt(2, 40), "max_tokens": 500, "stream": True}
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            async for _line in r.aiter_lines():
                break  # leave after the first token
        for _ in range(500):
            if not fleet.pods[0].engine.has_work():
                break
            await asyncio.sleep(0.01)
        assert not fleet.pods[0].engine.has_work()
        m = await scrape(client, url)
    assert m["vllm:request_success_total{finished_reason=abort}"] == 0
    assert sum(v for k, v in m.items() if k.startswith("vllm:request_success_total")) == 0
