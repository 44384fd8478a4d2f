"""The subscriber's outcomes over real ZeroMQ sockets: gaps (filled or not), restarts, replay, reconnects.

Mid-stream drops come from `FakePublisher` (tests/kv_event_support.py): the simulator's publisher never drops
a message once a subscriber is attached. Everything else is the real publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import pytest
import zmq
import zmq.asyncio

from bench.sim.kv_cache import Removed
from bench.sim.kv_events import KVEventPublisher, KVEventsConfig
from epp.kv_events.subscriber import Gap, KVEventSubscriber, Outcome, Received, Restart, Started
from tests.kv_event_support import FakePublisher, removed, stored


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


async def _next(stream: AsyncGenerator[Outcome, None]) -> Outcome:
    async with asyncio.timeout(20):
        return await anext(stream)


async def _attach(
    pub: FakePublisher | KVEventPublisher, stream: AsyncGenerator[Outcome, None]
) -> list[Outcome]:
    """Send heartbeats (stored block 0) until one arrives live: the subscription is then attached. Returns
    every outcome up to and including it."""
    seen: list[Outcome] = []
    pending = asyncio.ensure_future(anext(stream))
    async with asyncio.timeout(20):
        while True:
            if isinstance(pub, FakePublisher):
                await pub.send(stored(0))
            else:
                pub.publish([Removed(0)])
            done, _ = await asyncio.wait({pending}, timeout=0.05)
            while done:
                outcome = pending.result()
                seen.append(outcome)
                if isinstance(outcome, Received) and not outcome.replayed:
                    return seen  # no anext left pending: cancelling one would end the generator
                pending = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait({pending}, timeout=0.01)


async def test_a_gap_the_replay_buffer_covers_is_filled(ctx: zmq.asyncio.Context) -> None:
    pub = FakePublisher(ctx)
    sub = KVEventSubscriber(ctx, pub.endpoint, replay_endpoint=pub.replay_endpoint, topic="kv")
    stream = sub.stream()
    try:
        first = await _next(stream)
        assert first == Started(True, "nothing published yet") and sub.complete
        await _attach(pub, stream)
        dropped = await pub.send(removed(7), drop=True)
        live = await pub.send(removed(8))
        outcomes = [await _next(stream) for _ in range(3)]
        assert isinstance(outcomes[0], Received) and outcomes[0].replayed
        assert outcomes[0].message.seq == dropped
        assert outcomes[1] == Gap(dropped, live, True, "filled from the replay socket")
        assert isinstance(outcomes[2], Received) and outcomes[2].message.seq == live
        assert sub.complete and sub.lost == 0 and sub.gaps == 1
    finally:
        await stream.aclose()
        sub.close()
        await pub.close()


@pytest.mark.parametrize(
    ("replay", "buffer_steps", "answer", "reason"),
    [
        (False, 10_000, True, "no replay socket"),
        (True, 1, True, "replay buffer too short"),
        (True, 10_000, False, "replay timeout"),
    ],
)
async def test_a_gap_that_cannot_be_filled_is_reported_lost(
    ctx: zmq.asyncio.Context, replay: bool, buffer_steps: int, answer: bool, reason: str
) -> None:
    pub = FakePublisher(ctx, replay=replay, buffer_steps=buffer_steps, answer_replays=answer)
    sub = KVEventSubscriber(
        ctx, pub.endpoint, replay_endpoint=pub.replay_endpoint, topic="kv", replay_timeout_ms=200
    )
    stream = sub.stream()
    try:
        start = await _next(stream)
        assert isinstance(start, Started)
        seen = await _attach(pub, stream)
        assert seen  # the heartbeat
        hole = await pub.send(removed(1), drop=True)
        live = await pub.send(removed(2))
        gap = await _next(stream)
        assert gap == Gap(hole, live, False, reason)
        after = await _next(stream)
        assert isinstance(after, Received) and after.message.seq == live and not after.replayed
        assert not sub.complete and sub.lost >= 1
    finally:
        await stream.aclose()
        sub.close()
        await pub.close()


async def test_the_sequence_going_back_is_a_restart_and_replay_rebuilds_the_new_stream(
    ctx: zmq.asyncio.Context,
) -> None:
    pub = KVEventPublisher(KVEventsConfig("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "kv"), 16)
    pub.start()
    sub = KVEventSubscriber(ctx, pub.endpoint, replay_endpoint=pub.replay_endpoint, topic="kv")
    stream = sub.stream()
    try:
        assert await _next(stream) == Started(True, "nothing published yet")
        for i in range(3):
            pub.publish([Removed(i)])
        got: list[int] = []
        feeder_i = 3
        async with asyncio.timeout(20):
            while len(got) < 4:
                pub.publish([Removed(feeder_i)])
                feeder_i += 1
                outcome = await _next(stream)
                assert isinstance(outcome, Received | Gap)
                if isinstance(outcome, Received):
                    got.append(outcome.message.seq)
        assert got == [0, 1, 2, 3]  # the ones before the subscription came from the replay socket
        while sub.next_seq < feeder_i:
            assert isinstance(await _next(stream), Received | Gap)
        pub.restart()  # a new engine: numbering from 0, nothing to replay
        pub.publish([Removed(100)])
        pub.publish([Removed(101)])
        restart = await _next(stream)
        assert isinstance(restart, Restart) and "went back" in restart.reason
        first, second = await _next(stream), await _next(stream)
        assert isinstance(first, Received) and first.message.seq == 0
        assert isinstance(second, Received) and second.message.seq == 1
        assert sub.complete and sub.restarts == 1
    finally:
        await stream.aclose()
        sub.close()
        await pub.close()


async def test_live_copies_of_replayed_messages_are_skipped_but_a_new_engine_is_not(
    ctx: zmq.asyncio.Context,
) -> None:
    pub = FakePublisher(ctx)
    for i in range(3):
        await pub.send(stored(i + 1), drop=True)  # before the subscriber: only in the replay buffer
    sub = KVEventSubscriber(ctx, pub.endpoint, replay_endpoint=pub.replay_endpoint, topic="kv")
    stream = sub.stream()
    try:
        assert await _next(stream) == Started(True, "replayed from seq 0")
        assert [(await _next(stream)).message.seq for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
        await _attach(pub, stream)  # heartbeats at seq 3.. come live
        # The same numbers again with other timestamps: a restarted engine that re-used them.
        pub.seq = 0
        pub.buffer = []
        await pub.send(stored(50))
        restart = await _next(stream)
        assert isinstance(restart, Restart)
        again = await _next(stream)
        assert isinstance(again, Received) and again.message.seq == 0 and sub.complete
    finally:
        await stream.aclose()
        sub.close()
        await pub.close()


async def _rebind(ctx: zmq.asyncio.Context, endpoint: str, start_seq: int) -> FakePublisher:
    """A publisher on the port just closed: ZeroMQ releases it asynchronously, so retry for a while."""
    async with asyncio.timeout(20):
        while True:
            try:
                return FakePublisher(ctx, endpoint=endpoint, replay=False, start_seq=start_seq)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE:
                    raise
                await asyncio.sleep(0.05)


async def test_a_dropped_connection_is_a_restart_even_if_the_new_numbering_is_ahead(
    ctx: zmq.asyncio.Context,
) -> None:
    old = FakePublisher(ctx, replay=False)
    endpoint = old.endpoint
    sub = KVEventSubscriber(ctx, endpoint, topic="kv")
    stream = sub.stream()
    try:
        assert isinstance(await _next(stream), Started)
        await _attach(old, stream)
        last = old.seq - 1
        await old.close()
        # A new engine on the same port whose first 1,000 messages went out while nobody was connected.
        new = await _rebind(ctx, endpoint, start_seq=last + 1_000)
        try:
            seen = await _attach(new, stream)
            assert isinstance(seen[0], Restart) and seen[0].reason == "connection lost"
            assert isinstance(seen[1], Gap) and not seen[1].filled and seen[1].start == 0
            assert isinstance(seen[-1], Received) and seen[-1].message.seq >= last + 1_000
            assert sub.restarts == 1 and not sub.complete
        finally:
            await new.close()
    finally:
        await stream.aclose()
        sub.close()


async def test_bind_mode_receives_from_a_connecting_publisher(ctx: zmq.asyncio.Context) -> None:
    sub = KVEventSubscriber(ctx, "tcp://127.0.0.1:*", bind=True, topic="")
    pub = KVEventPublisher(KVEventsConfig(sub.endpoint), 16)  # a plain address: the publisher connects
    stream = sub.stream()
    try:
        assert await _next(stream) == Started(False, "no replay socket: complete once seq 0 is received")
        seen = await _attach(pub, stream)
        assert isinstance(seen[-1], Received)
        assert pub.endpoint == sub.endpoint
    finally:
        await stream.aclose()
        sub.close()
        await pub.close()


async def test_an_undecodable_message_is_skipped_and_shows_up_as_a_gap(ctx: zmq.asyncio.Context) -> None:
    pub = FakePublisher(ctx)
    sub = KVEventSubscriber(ctx, pub.endpoint, replay_endpoint=pub.replay_endpoint, topic="kv")
    stream = sub.stream()
    try:
        await _next(stream)
        await _attach(pub, stream)
        await pub._pub.send_multipart([b"kv", (pub.seq).to_bytes(8, "big"), b"\xc1"])  # not msgpack
        pub.seq += 1
        await pub.send(removed(3))
        gap = await _next(stream)
        assert isinstance(gap, Gap) and not gap.filled and sub.decode_errors == 1
    finally:
        await stream.aclose()
        sub.close()
        await pub.close()


async def test_a_partly_replayed_gap_is_lost_but_what_follows_the_hole_is_kept(
    ctx: zmq.asyncio.Context,
) -> None:
    pub = FakePublisher(ctx, buffer_steps=2)
    sub = KVEventSubscriber(ctx, pub.endpoint, replay_endpoint=pub.replay_endpoint, topic="kv")
    stream = sub.stream()
    try:
        await _next(stream)
        await _attach(pub, stream)
        lost_before = sub.lost
        first = await pub.send(removed(1), drop=True)
        await pub.send(removed(2), drop=True)
        kept = await pub.send(removed(3), drop=True)  # still in the 2-message buffer, with the next one
        live = await pub.send(removed(4))
        gap = await _next(stream)
        assert gap == Gap(first, live, False, f"replay buffer starts at seq {kept}")
        after_hole, current = await _next(stream), await _next(stream)
        assert isinstance(after_hole, Received) and after_hole.replayed and after_hole.message.seq == kept
        assert isinstance(current, Received) and current.message.seq == live
        assert sub.lost == lost_before + 2 and not sub.complete
    finally:
        await stream.aclose()
        sub.close()
        await pub.close()
