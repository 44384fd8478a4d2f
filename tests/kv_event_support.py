"""Test helpers for KV-event subscriptions: a publisher that can drop messages, and a recording sink.

The simulator's real publisher (bench.sim.kv_events) never drops a message once a subscriber is attached, so
a mid-stream gap cannot be produced with it; `FakePublisher` speaks the same wire format (vLLM 0.32's
frames, replay ROUTER ending with seq -1) and can skip a live send, keep a short buffer, or not answer
replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from bench.sim.kv_events import END_SEQ, encode_message
from epp.kv_events.index import BlockIndex
from epp.kv_events.wire import EventMessage


def stored(*hashes: int, parent: int | None = None, block_size: int = 4) -> dict[str, Any]:
    return {
        "type": "BlockStored",
        "block_hashes": list(hashes),
        "parent_block_hash": parent,
        "token_ids": list(range(block_size * len(hashes))),
        "block_size": block_size,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
    }


def removed(*hashes: int) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": list(hashes), "medium": "GPU"}


CLEARED: dict[str, Any] = {"type": "AllBlocksCleared"}


class FakePublisher:
    """PUB (+ optional replay ROUTER) on loopback, numbering messages like vLLM; `send(drop=True)` keeps a
    message for replay but never sends it live. `answer_replays=False` leaves replay requests unanswered."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        *,
        endpoint: str = "tcp://127.0.0.1:*",
        replay: bool = True,
        topic: str = "kv",
        buffer_steps: int = 10_000,
        answer_replays: bool = True,
        start_seq: int = 0,
    ) -> None:
        self.topic = topic
        self.seq = start_seq
        self.buffer_steps = buffer_steps
        self.answer_replays = answer_replays
        self.buffer: list[tuple[int, list[bytes]]] = []
        self._pub = ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(endpoint)
        self._router: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        if replay:
            self._router = ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.bind("tcp://127.0.0.1:*")
            self._task = asyncio.get_running_loop().create_task(self._serve())

    @property
    def endpoint(self) -> str:
        return str(self._pub.getsockopt_string(zmq.LAST_ENDPOINT))

    @property
    def replay_endpoint(self) -> str | None:
        return None if self._router is None else str(self._router.getsockopt_string(zmq.LAST_ENDPOINT))

    async def send(self, *events: dict[str, Any], drop: bool = False) -> int:
        seq = self.seq
        self.seq += 1
        frames = encode_message(self.topic, seq, time.time(), list(events))
        self.buffer = [*self.buffer, (seq, frames)][-self.buffer_steps :]
        if not drop:
            await self._pub.send_multipart(frames)
        return seq

    async def _serve(self) -> None:
        assert self._router is not None
        while True:
            client, _empty, start = await self._router.recv_multipart()
            if not self.answer_replays:
                continue
            start_seq = int.from_bytes(start, "big")
            for seq, frames in list(self.buffer):
                if seq >= start_seq:
                    await self._router.send_multipart([client, b"", *frames])
            await self._router.send_multipart([client, b"", b"", END_SEQ, b""])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pub.close(linger=0)
        if self._router is not None:
            self._router.close(linger=0)


class RecordingSink:
    """A KVEventSink keeping each pod's block hashes (BlockIndex) and a log of what the follower did."""

    def __init__(self) -> None:
        self.blocks: dict[str, BlockIndex] = {}
        self.synced: dict[str, bool] = {}
        self.log: list[tuple[str, str, object]] = []  # (pod, "apply"|"reset"|"synced", seq or synced flag)

    def apply(self, pod: str, message: EventMessage) -> None:
        self.blocks.setdefault(pod, BlockIndex()).apply(message.events)
        self.log.append((pod, "apply", message.seq))

    def reset(self, pod: str, *, synced: bool) -> None:
        self.blocks[pod] = BlockIndex()
        self.synced[pod] = synced
        self.log.append((pod, "reset", synced))

    def mark_synced(self, pod: str) -> None:
        self.synced[pod] = True
        self.log.append((pod, "synced", True))

    def is_synced(self, pod: str) -> bool:
        return self.synced.get(pod, False)

    def hashes(self, pod: str) -> set[int]:
        index = self.blocks.get(pod)
        return set() if index is None else set(index.hashes)


async def eventually(check: Callable[[], bool], within_s: float = 20.0, what: str = "condition") -> None:
    """Wait until `check()` holds (a generous bound: the machine may be busy)."""
    try:
        async with asyncio.timeout(within_s):
            while not check():  # noqa: ASYNC110 (the states polled have no event to wait on)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {within_s}s waiting for {what}") from None
