"""The simulator's publisher over real ZeroMQ sockets: bind/connect by endpoint form, sequence, replay."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import zmq
import zmq.asyncio

from bench.sim.kv_cache import Removed, Stored
from bench.sim.kv_events import KVEventPublisher, KVEventsConfig, binds, offset_port
from epp.kv_events.sources import parse_sources
from epp.kv_events.subscriber import KVEventSubscriber
from epp.kv_events.wire import BlockRemoved, BlockStored

FIXTURES = Path(__file__).parent / "fixtures" / "vllm" / "vllm-0.32"


async def _collect(sub: KVEventSubscriber, pub: KVEventPublisher, count: int, start: int = 0) -> list[int]:
    """Publish until the subscription is attached (PUB drops what comes before), then collect."""
    seqs: list[int] = []
    stream = sub.messages()

    async def feed() -> None:
        for i in range(start, 10_000):
            pub.publish([Removed(i)])  # message seq i carries hash i
            await asyncio.sleep(0.02)

    feeder = asyncio.create_task(feed())
    try:
        async with asyncio.timeout(30):
            async for msg in stream:
                assert isinstance(msg.events[0], BlockRemoved) and msg.events[0].block_hashes == (msg.seq,)
                seqs.append(msg.seq)
                if len(seqs) == count:
                    break
    finally:
        feeder.cancel()
        await stream.aclose()
    return seqs


def test_endpoint_forms():
    assert binds("tcp://*:5557") and binds("tcp://[::]:5557") and binds("ipc:///tmp/x")
    assert not binds("tcp://127.0.0.1:5557")
    assert (
        offset_port("tcp://*:5557", 2) == "tcp://*:5559" and offset_port("inproc://k", 1) == "inproc://k_dp1"
    )
    cfg = KVEventsConfig.from_json(
        '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:6000",'
        ' "replay_endpoint": "tcp://*:6100", "topic": "kv"}'
    )
    assert cfg == KVEventsConfig("tcp://*:6000", "tcp://*:6100", "kv")
    assert cfg.for_pod(1) == KVEventsConfig("tcp://*:6001", "tcp://*:6101", "kv")
    assert KVEventsConfig.from_json('{"enable_kv_cache_events": false}') is None


@pytest.mark.slow
async def test_wildcard_endpoint_binds_and_replay_fills_what_was_missed():
    pub = KVEventPublisher(KVEventsConfig("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "kv@p0@m"), 16)
    pub.start()
    for i in range(3):
        pub.publish([Removed(i)])  # no subscriber yet: lost on PUB, kept for replay
    ctx = zmq.asyncio.Context()
    sub = KVEventSubscriber(ctx, pub.endpoint, replay_endpoint=pub.replay_endpoint, topic="kv@p0@m")
    try:
        seqs = await _collect(sub, pub, 6, start=3)
        assert seqs == list(range(6)) and sub.lost == 0
        replayed = await sub.replay(1)
        assert [m.seq for m in replayed[:3]] == [1, 2, 3] and replayed[0].topic == "kv@p0@m"
    finally:
        sub.close()
        await pub.close()
        ctx.term()


@pytest.mark.slow
async def test_plain_endpoint_connects_to_a_binding_subscriber():
    ctx = zmq.asyncio.Context()
    sub = KVEventSubscriber(ctx, "tcp://127.0.0.1:*", bind=True)
    pub = KVEventPublisher(KVEventsConfig(sub.endpoint), 128)
    try:
        assert pub.endpoint == sub.endpoint  # the publisher dialled the subscriber
        seqs = await _collect(sub, pub, 2)
        assert seqs[1] == seqs[0] + 1  # no replay socket: what came before attaching is lost
        assert sub.lost == seqs[0]
        pub.publish([Stored(9, None, tuple(range(128)))])
        async with asyncio.timeout(30):
            async for msg in sub.messages():
                if isinstance(msg.events[0], BlockStored):
                    assert msg.events[0].block_hashes == (9,) and msg.events[0].block_size == 128
                    break
    finally:
        sub.close()
        await pub.close()
        ctx.term()


async def test_kv_event_sources_answers_like_vllm_032_with_the_ports_filled_in():
    pub = KVEventPublisher(KVEventsConfig("tcp://*:*", "tcp://*:*", "t"), 16)
    try:
        sources = pub.sources()
        assert list(sources) == ["0"]  # data-parallel rank -> that engine's events config, as vLLM 0.32
        real = orjson.loads((FIXTURES / "kv-event-sources.json").read_bytes())["0"]
        assert set(sources["0"]) == set(real)
        src = sources["0"]
        assert src["endpoint"].startswith("tcp://*:") and src["endpoint"] != "tcp://*:*"  # wildcard kept
        assert src["replay_endpoint"].startswith("tcp://*:") and src["topic"] == "t"
        [address] = parse_sources(sources, "127.0.0.1")  # the subscriber dials the pod's own address
        assert address.endpoint == src["endpoint"].replace("*", "127.0.0.1")
    finally:
        await pub.close()


@pytest.mark.slow
async def test_a_restarted_publisher_counts_from_zero_and_the_subscriber_notices():
    pub = KVEventPublisher(KVEventsConfig("tcp://127.0.0.1:*"), 16)
    ctx = zmq.asyncio.Context()
    sub = KVEventSubscriber(ctx, pub.endpoint)
    try:
        await _collect(sub, pub, 2)
        pub.restart()
        pub.publish([Removed(0)])
        async with asyncio.timeout(30):
            async for msg in sub.messages():
                assert msg.seq == 0
                break
        assert sub.restarts == 1
    finally:
        sub.close()
        await pub.close()
        ctx.term()
