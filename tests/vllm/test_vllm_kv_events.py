"""Real vLLM's KV-cache events (ZeroMQ PUB, `--kv-events-config`) decoded with epp.kv_events."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest
import zmq
import zmq.asyncio

from epp.kv_events.index import BlockIndex
from epp.kv_events.subscriber import KVEventSubscriber
from epp.kv_events.wire import BlockStored, EventMessage
from tests.vllm.conftest import Pods
from tests.vllm.pods import BLOCK_SIZE
from tests.vllm.support import completion

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
async def subscriber(pods: Pods) -> AsyncIterator[KVEventSubscriber]:
    ctx = zmq.asyncio.Context()
    sub = KVEventSubscriber(ctx, pods.kv_endpoints[0], topic="kv")
    try:
        yield sub
    finally:
        sub.close()
        ctx.term()


async def stored_after(
    sub: KVEventSubscriber, client: httpx.AsyncClient, url: str, prompt: list[int]
) -> list[EventMessage]:
    """Send `prompt`; the messages received until one stores a block starting with its first token."""
    messages = sub.messages()
    answer = await client.post(f"{url}/v1/completions", json=completion(prompt, max_tokens=2))
    assert answer.status_code == 200, answer.text
    seen: list[EventMessage] = []
    async with asyncio.timeout(5):
        async for msg in messages:
            seen.append(msg)
            blocks = [e for e in msg.events if isinstance(e, BlockStored)]
            if any(e.token_ids[:1] == (prompt[0],) for e in blocks):
                return seen
    raise AssertionError("unreachable")


async def test_stored_blocks_decode_to_the_prompt(subscriber: KVEventSubscriber, pods: Pods) -> None:
    rng = random.Random()
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        # A SUB socket misses what was published before it joined: prime until one message arrives.
        for _ in range(20):
            try:
                await stored_after(subscriber, client, pods.urls[0], [rng.randrange(3, 1000)] * BLOCK_SIZE)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError(f"no KV event from {pods.kv_endpoints[0]}")
        prompt = [rng.randrange(3, 1000) for _ in range(2 * BLOCK_SIZE + 5)]
        messages = await stored_after(subscriber, client, pods.urls[0], prompt)
    assert all(m.topic == "kv" for m in messages)
    seqs = [m.seq for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    stored = [e for m in messages for e in m.events if isinstance(e, BlockStored)]
    ours = next(e for e in stored if e.token_ids[:1] == (prompt[0],))
    assert ours.block_size == BLOCK_SIZE
    assert ours.parent_block_hash is None  # the prompt's first block starts a chain
    assert len(ours.block_hashes) == 2  # the two full prompt blocks; the last 5 tokens (+2 generated) are not
    assert ours.token_ids == tuple(prompt[: 2 * BLOCK_SIZE])
    index = BlockIndex()
    index.apply(stored)
    assert set(ours.block_hashes) <= index.hashes
