"""A simulated pod with `--kv-events-config`: /kv_event_sources, events for its requests, reset, restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import httpx
import pytest
import zmq.asyncio

from bench.sim.fleet import SimFleet
from bench.sim.kv_events import KVEventsConfig
from epp.kv_events.index import BlockIndex
from epp.kv_events.sources import parse_sources
from epp.kv_events.subscriber import KVEventSubscriber
from epp.kv_events.wire import AllBlocksCleared, BlockStored, EventMessage

CONFIG = KVEventsConfig("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "kv@sim")


async def _next(stream: AsyncGenerator[EventMessage, None], want: type) -> EventMessage:
    async with asyncio.timeout(30):
        async for msg in stream:
            if any(isinstance(e, want) for e in msg.events):
                return msg
    raise AssertionError("stream ended")


@pytest.mark.slow
async def test_pod_publishes_what_it_caches_and_describes_the_publisher():
    ctx = zmq.asyncio.Context()
    async with SimFleet(pods=2, profile="cpu-tiny", time_scale=20.0, kv_events=CONFIG) as fleet:
        async with httpx.AsyncClient(timeout=30.0) as client:
            sources = [(await client.get(f"{url}/kv_event_sources")).json() for url in fleet.urls]
            assert [list(s) for s in sources] == [["0"], ["0"]]  # vLLM 0.32: data-parallel rank -> config
            src = sources[0]["0"]
            assert src["topic"] == "kv@sim" and src["publisher"] == "zmq" and src["enable_kv_cache_events"]
            assert src["endpoint"] != sources[1]["0"]["endpoint"]  # one publisher per pod
            [address] = parse_sources(sources[0], "127.0.0.1")
            sub = KVEventSubscriber(
                ctx, address.endpoint, replay_endpoint=address.replay_endpoint, topic="kv@sim"
            )
            stream = sub.messages()
            index = BlockIndex()
            await asyncio.sleep(0.2)  # let the subscription reach the publisher; replay covers the rest
            ids = [(i * 7) % 1000 for i in range(300)]  # inside the tiny model's 1,024-token vocabulary
            body = {"model": "tiny-llama", "prompt": ids, "max_tokens": 1}
            r = await client.post(f"{fleet.urls[0]}/v1/completions", json=body)
            assert r.status_code == 200
            msg = await _next(stream, BlockStored)
            index.apply(msg.events)
            [stored] = [e for e in msg.events if isinstance(e, BlockStored)]
            assert stored.block_size == 128 and stored.parent_block_hash is None
            assert stored.token_ids == tuple(ids[:256]) and len(stored.block_hashes) == 2
            assert index.hashes == fleet.pods[0].engine.pool.cached_hashes()
            r = await client.post(f"{fleet.urls[0]}/reset_prefix_cache")
            assert r.status_code == 200
            index.apply((await _next(stream, AllBlocksCleared)).events)
            assert index.hashes == set() == fleet.pods[0].engine.pool.cached_hashes()
            await stream.aclose()
            sub.close()
        assert (await httpx.AsyncClient().get(f"{fleet.urls[0]}/kv_event_sources")).status_code == 200
    ctx.term()


@pytest.mark.slow
async def test_without_kv_events_the_pod_lists_no_sources():
    async with SimFleet(pods=1, profile="tiny") as fleet, httpx.AsyncClient() as client:
        assert (await client.get(f"{fleet.urls[0]}/kv_event_sources")).json() == {}


@pytest.mark.slow
async def test_multi_round_chat_hits_the_previous_answer():
    async with SimFleet(pods=1, profile="tiny", time_scale=50.0, block_size=16) as fleet:
        pod = fleet.pods[0]
        url = f"{fleet.urls[0]}/v1/chat/completions"
        msgs = [
            {"role": "system", "content": "You are a helpful assistant. " * 10},
            {"role": "user", "content": "Hi"},
        ]
        async with httpx.AsyncClient(timeout=60.0) as client:
            body = {"model": pod.model_name, "messages": msgs, "max_tokens": 100, "ignore_eos": True}
            first = (await client.post(url, json=body)).json()
            prompt1 = first["usage"]["prompt_tokens"]
            msgs += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]}]
            msgs += [{"role": "user", "content": "And then?"}]
            hits = pod.engine.stats.prefix_hits
            await client.post(url, json={"model": pod.model_name, "messages": msgs, "max_tokens": 1})
        # Round 1 computed its prompt and 99 of its 100 answer tokens: every full block of those is a hit.
        assert pod.engine.stats.prefix_hits - hits == (prompt1 + 99) // 16 * 16
