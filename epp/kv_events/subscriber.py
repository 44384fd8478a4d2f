"""Follow one vLLM KV-event publisher over ZeroMQ, reporting gaps and restarts as explicit outcomes.

With a wildcard publisher endpoint (`tcp://*:PORT`) vLLM binds and the subscriber connects; with a plain
`tcp://HOST:PORT` vLLM connects, so the subscriber must bind it (`bind=True`). Messages sent before the
subscription is attached are lost; a gap in sequence numbers (or a late start) is filled from the replay
ROUTER when one is configured.

`stream()` yields, in order: `Started` once (after asking the replay socket for everything from seq 0),
`Received` per message (live or replayed, each once, in sequence order), `Gap` when sequence numbers were
skipped (`filled` or not) and `Restart` when the publisher's numbering went back or the connection dropped
(a new engine's stream: its cache started empty). `complete` says whether the current stream has been
followed from its seq 0 without an unfilled gap, i.e. whether what was received is everything the engine
published.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from epp.kv_events.wire import (
    EventMessage,
    KVEventDecodeError,
    decode_message,
    decode_replay_reply,
    replay_request,
)

RECONNECT_IVL_MS = 100  # ZeroMQ's own reconnect for connect mode: first retry after 100 ms ...
RECONNECT_IVL_MAX_MS = 1_000  # ... doubling up to 1 s: a restarted pod is re-attached within a second (its
# first messages are lost until then), while a pod that is down costs one connection attempt a second
RCVHWM = 100_000  # like vLLM's publisher hwm: a slow reader queues this many messages before ZeroMQ drops


@dataclass(frozen=True)
class Started:
    """The subscription is open; `complete`: the replay socket showed the whole stream from seq 0 (or it is
    still empty), so what follows is everything the engine published."""

    complete: bool
    reason: str


@dataclass(frozen=True)
class Received:
    """One message, in sequence order; `replayed` when it came from the replay socket."""

    message: EventMessage
    replayed: bool = False


@dataclass(frozen=True)
class Gap:
    """Messages `start` .. `end - 1` were not received live. `filled`: every one came from the replay socket
    (already yielded as Received); otherwise some are lost and the pod's view is unknown."""

    start: int
    end: int
    filled: bool
    reason: str


@dataclass(frozen=True)
class Restart:
    """A new stream: the sequence went back (`seq` lower than one already received) or the connection
    dropped, so the messages that follow may come from a new engine whose cache started empty."""

    last_seq: int
    reason: str


Outcome = Started | Received | Gap | Restart


class KVEventSubscriber:
    """SUB socket (+ DEALER for replays) on one publisher; `stream()` yields outcomes in order."""

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
        self._sub.setsockopt(zmq.RCVHWM, RCVHWM)
        self._sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self._sub.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        self._sub.setsockopt(zmq.LINGER, 0)
        # A dropped connection is the only sign of a restarted publisher whose new numbering already passed
        # the old one before we reconnected: watch for it.
        self._monitor: zmq.asyncio.Socket = self._sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            if bind:
                self._sub.bind(endpoint)
            else:
                self._sub.connect(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self._replay_endpoint = replay_endpoint
        self._replay_timeout_ms = replay_timeout_ms
        self.next_seq = 0
        self.last_live_seq = -1  # live messages from one publisher arrive in increasing order
        self.complete = False
        self._replayed: dict[int, float] = {}  # seq -> timestamp of replayed messages live may repeat
        self.lost = 0  # messages neither received nor replayed (replay buffer too short, no replay socket)
        self.restarts = 0  # the numbering went back or the connection dropped: a new stream
        self.gaps = 0
        self.replays = 0  # replay requests made
        self.decode_errors = 0

    @property
    def endpoint(self) -> str:
        """The SUB endpoint as bound (a port-0 or `*` endpoint resolved) or connected to."""
        last = self._sub.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else ""

    @property
    def has_replay(self) -> bool:
        return self._replay_endpoint is not None

    def forget(self) -> None:
        """Drop what is known of the stream (the pod restarted): the next message is judged from seq 0."""
        self.next_seq = 0
        self.last_live_seq = -1
        self.complete = False
        self._replayed = {}

    async def replay(self, start_seq: int) -> list[EventMessage]:
        """Every message the publisher still buffers from `start_seq` on; [] without a replay endpoint.
        Raises TimeoutError when the replay socket does not answer in time."""
        if self._replay_endpoint is None:
            return []
        self.replays += 1
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self._replay_endpoint)
        out: list[EventMessage] = []
        try:
            async with asyncio.timeout(self._replay_timeout_ms / 1000):
                await dealer.send_multipart(replay_request(start_seq))
                while (msg := decode_replay_reply(await dealer.recv_multipart())) is not None:
                    out.append(msg)
        finally:
            dealer.close(linger=0)
        return out

    async def _try_replay(self, start_seq: int) -> tuple[list[EventMessage], str | None]:
        """(messages, None), or ([], why not)."""
        if self._replay_endpoint is None:
            return [], "no replay socket"
        try:
            return await self.replay(start_seq), None
        except TimeoutError:
            return [], "replay timeout"
        except (zmq.ZMQError, KVEventDecodeError) as exc:
            return [], f"replay failed: {exc}"

    async def stream(self) -> AsyncGenerator[Outcome, None]:
        """Outcomes in order, forever (until the generator is closed); see the module docstring."""
        started, replayed = await self._start()
        yield started
        for msg in replayed:
            yield Received(msg, replayed=True)
        poller = zmq.asyncio.Poller()
        poller.register(self._sub, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            ready = dict(await poller.poll())
            if self._monitor in ready and (restart := await self._drain_monitor()) is not None:
                yield restart
            if self._sub not in ready:
                continue
            # Everything queued, without a poll per message (the poll is most of the per-message cost).
            while (frames := await self._recv_nowait()) is not None:
                try:
                    msg = decode_message(frames)
                except KVEventDecodeError:
                    self.decode_errors += 1  # its sequence number shows up as a gap at the next message
                    continue
                if msg.seq != self.next_seq and (restart := await self._drain_monitor()) is not None:
                    yield restart  # a disconnect queued before this message belongs before it
                async for outcome in self._accept(msg):
                    yield outcome

    async def _recv_nowait(self) -> list[bytes] | None:
        try:
            return await self._sub.recv_multipart(flags=zmq.NOBLOCK)  # done at once, or Again
        except zmq.Again:
            return None

    async def _start(self) -> tuple[Started, list[EventMessage]]:
        """Ask for everything from seq 0: a young engine's whole stream, or what its buffer still holds."""
        if self._replay_endpoint is None:
            return Started(False, "no replay socket: complete once seq 0 is received"), []
        msgs, why = await self._try_replay(0)
        if why is not None:
            return Started(False, why), []
        # Live copies of these may still be queued on the SUB socket: remember them to tell copies from a
        # new engine's messages with the same numbers.
        self._replayed = {m.seq: m.timestamp for m in msgs}
        if msgs:
            self.next_seq = msgs[-1].seq + 1
        if msgs and msgs[0].seq != 0:
            return Started(False, f"replay buffer starts at seq {msgs[0].seq}"), msgs
        self.complete = True
        return Started(True, "replayed from seq 0" if msgs else "nothing published yet"), msgs

    async def _drain_monitor(self) -> Restart | None:
        restart: Restart | None = None
        while await self._monitor.poll(0):
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                restart = Restart(self.next_seq - 1, "connection lost")
        if restart is not None:
            self.restarts += 1
            self.forget()
        return restart

    async def _accept(self, msg: EventMessage) -> AsyncGenerator[Outcome, None]:
        if msg.seq < self.next_seq:
            # Live messages of one publisher arrive in increasing order, so a number already passed is either
            # the live copy of a replayed message (same timestamp) or a new engine counting from 0 again.
            if msg.seq > self.last_live_seq and self._replayed.get(msg.seq) == msg.timestamp:
                self.last_live_seq = msg.seq
                return
            self.restarts += 1
            last = self.next_seq - 1
            self.forget()
            yield Restart(last, f"sequence went back from {last} to {msg.seq}")
        self._replayed.clear()  # live has passed every replayed message
        self.last_live_seq = msg.seq
        if msg.seq > self.next_seq:
            async for outcome in self._fill(msg.seq):
                yield outcome
        if msg.seq == 0:
            self.complete = True
        self.next_seq = msg.seq + 1
        yield Received(msg)

    async def _fill(self, until: int) -> AsyncGenerator[Outcome, None]:
        """Replay next_seq .. until-1; Received for each message, then a Gap saying whether all came."""
        start = self.next_seq
        self.gaps += 1
        msgs, why = await self._try_replay(start)
        unique = {m.seq: m for m in msgs if start <= m.seq < until}
        wanted = [unique[seq] for seq in sorted(unique)]
        if len(wanted) == until - start:  # every number in the range, once
            for m in wanted:
                if m.seq == 0:
                    self.complete = True
                self.next_seq = m.seq + 1
                yield Received(m, replayed=True)
            yield Gap(start, until, True, "filled from the replay socket")
            return
        # Some are lost: report first (the follower drops the pod's blocks), then the run of messages that
        # ends right before `until` (what follows the last hole) is still worth applying.
        self.complete = False
        self.lost += (until - start) - len(wanted)
        first = len(wanted)
        while first > 0 and wanted[first - 1].seq == until - (len(wanted) - first) - 1:
            first -= 1
        if why is None:
            why = f"replay buffer starts at seq {wanted[0].seq}" if wanted else "replay buffer too short"
        yield Gap(start, until, False, why)
        for m in wanted[first:]:
            self.next_seq = m.seq + 1
            yield Received(m, replayed=True)

    async def messages(self) -> AsyncGenerator[EventMessage, None]:
        """Only the messages of `stream()`: in order, each once, gaps filled from the replay socket."""
        stream = self.stream()
        try:
            async for outcome in stream:
                if isinstance(outcome, Received):
                    yield outcome.message
        finally:
            await stream.aclose()

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._sub.disable_monitor()
        self._monitor.close(linger=0)
        self._sub.close(linger=0)
