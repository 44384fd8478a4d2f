"""Follow one vLLM KV-event publisher over ZeroMQ, recovering missed messages from its replay socket.

With a wildcard publisher endpoint (`tcp://*:PORT`) vLLM binds and the subscriber connects; with a plain
`tcp://HOST:PORT` vLLM connects, so the subscriber must bind it (`bind=True`). Messages sent before the
subscription is attached are lost; a gap in sequence numbers (or a late start) is filled from the replay
ROUTER when one is configured.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import zmq
import zmq.asyncio

from epp.kv_events.wire import EventMessage, decode_message, decode_replay_reply, replay_request


class KVEventSubscriber:
    """SUB socket (+ DEALER for replays) on one publisher; `messages()` yields them in sequence order."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        *,
        bind: bool = False,
        replay_endpoint: str | None = None,
        topic: str = "",
        replay_timeout_ms: int = 1_000,
    ) -> None:
        self._ctx = ctx
        self._sub = ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
        if bind:
            self._sub.bind(endpoint)
        else:
            self._sub.connect(endpoint)
        self._replay_endpoint = replay_endpoint
        self._replay_timeout_ms = replay_timeout_ms
        self.next_seq = 0
        self.lost = 0  # messages neither received nor replayed (replay buffer too short, no replay socket)
        self.restarts = 0  # a restarted publisher counts from 0 again; its cache started empty

    @property
    def endpoint(self) -> str:
        """The SUB endpoint as bound (a port-0 or `*` endpoint resolved) or connected to."""
        last = self._sub.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else ""

    async def replay(self, start_seq: int) -> list[EventMessage]:
        """Every message the publisher still buffers from `start_seq` on; [] without a replay endpoint."""
        if self._replay_endpoint is None:
            return []
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.RCVTIMEO, self._replay_timeout_ms)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self._replay_endpoint)
        out: list[EventMessage] = []
        try:
            await dealer.send_multipart(replay_request(start_seq))
            while (msg := decode_replay_reply(await dealer.recv_multipart())) is not None:
                out.append(msg)
        finally:
            dealer.close()
        return out

    async def messages(self) -> AsyncGenerator[EventMessage, None]:
        """Messages in order, each once; gaps filled from the replay socket when possible."""
        while True:
            msg = decode_message(await self._sub.recv_multipart())
            if msg.seq == 0 and self.next_seq > 0:
                self.restarts += 1  # callers see `restarts` change and drop what they knew of the pod
                self.next_seq = 0
            if msg.seq < self.next_seq:
                continue  # already yielded from a replay
            if msg.seq > self.next_seq:
                for missed in await self.replay(self.next_seq):
                    if self.next_seq <= missed.seq < msg.seq:
                        self.lost += missed.seq - self.next_seq
                        self.next_seq = missed.seq + 1
                        yield missed
                self.lost += msg.seq - self.next_seq
            self.next_seq = msg.seq + 1
            yield msg

    def close(self) -> None:
        self._sub.close(linger=0)
