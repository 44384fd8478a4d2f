"""The simulator's KV-event publisher: what vLLM sends with `--kv-events-config` (publisher "zmq").

Each engine step with cache changes becomes one message of three ZeroMQ frames: topic, 8-byte big-endian
sequence number (from 0) and msgpack `[timestamp, [event, ...], data_parallel_rank]`, each event a map whose
first key is `type`, with vLLM 0.32's keys in its order. As in vLLM, an endpoint with a wildcard (`*`, `::`)
or an ipc/inproc one is bound, any other is connected to (the subscriber binds), and an optional replay
ROUTER socket resends buffered messages from a requested sequence number, ending with sequence -1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson
import zmq
import zmq.asyncio

from bench.sim.kv_cache import CacheEvent, Cleared, Removed, Stored

END_SEQ = (-1).to_bytes(8, "big", signed=True)
MEDIUM = "GPU"  # what vLLM 0.32 reports, on the CPU build too


@dataclass(frozen=True)
class KVEventsConfig:
    """The fields of vLLM's `--kv-events-config` the simulator uses."""

    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    topic: str = ""
    buffer_steps: int = 10_000
    hwm: int = 100_000

    @classmethod
    def from_json(cls, text: str) -> KVEventsConfig | None:
        """Parse vLLM's JSON; None when events are off (`enable_kv_cache_events` false, publisher "null")."""
        raw = orjson.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("--kv-events-config must be a JSON object")
        if not raw.get("enable_kv_cache_events", False) or raw.get("publisher", "zmq") == "null":
            return None
        return cls(
            endpoint=str(raw.get("endpoint", cls.endpoint)),
            replay_endpoint=raw.get("replay_endpoint"),
            topic=str(raw.get("topic", "")),
            buffer_steps=int(raw.get("buffer_steps", 10_000)),
            hwm=int(raw.get("hwm", 100_000)),
        )

    def for_pod(self, index: int) -> KVEventsConfig:
        """Pod `index` of a fleet: TCP ports shifted by the index (vLLM's data-parallel-rank convention)."""
        return KVEventsConfig(
            offset_port(self.endpoint, index),
            None if self.replay_endpoint is None else offset_port(self.replay_endpoint, index),
            self.topic,
            self.buffer_steps,
            self.hwm,
        )


def offset_port(endpoint: str, offset: int) -> str:
    """`tcp://host:port` with port + offset (a `*` or 0 port stays); inproc endpoints get `_dp<offset>`."""
    if offset == 0:
        return endpoint
    if endpoint.startswith("inproc://"):
        return f"{endpoint}_dp{offset}"
    base, _, port = endpoint.rpartition(":")
    if port in ("*", "0"):
        return endpoint  # any free port, for each pod
    return f"{base}:{int(port) + offset}"


def binds(endpoint: str) -> bool:
    """Whether vLLM binds this PUB endpoint (else it connects and the subscriber must bind)."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def wire_events(events: list[CacheEvent], block_size: int, lora_ids: dict[str, int]) -> list[dict[str, Any]]:
    """vLLM's event maps for the pool's events; a run of chained stored blocks becomes one BlockStored."""
    out: list[dict[str, Any]] = []
    last: Stored | None = None
    for ev in events:
        if isinstance(ev, Stored):
            prev = out[-1] if out and last is not None else None
            if (
                prev is not None
                and last is not None
                and ev.parent_hash == last.block_hash
                and ev.lora == last.lora
            ):
                prev["block_hashes"].append(ev.block_hash)
                prev["token_ids"].extend(ev.token_ids)
                prev["extra_keys"].append(_extra_keys(ev))
            else:
                out.append(
                    {
                        "type": "BlockStored",
                        "block_hashes": [ev.block_hash],
                        "parent_block_hash": ev.parent_hash,
                        "token_ids": list(ev.token_ids),
                        "block_size": block_size,
                        "lora_id": None if ev.lora is None else lora_ids.get(ev.lora),
                        "medium": MEDIUM,
                        "lora_name": ev.lora,
                        "extra_keys": [_extra_keys(ev)],
                        "group_idx": 0,
                        "kv_cache_spec_kind": "full_attention",
                    }
                )
            last = ev
            continue
        last = None
        if isinstance(ev, Removed):
            out.append(
                {"type": "BlockRemoved", "block_hashes": [ev.block_hash], "medium": MEDIUM, "group_idx": 0}
            )
        elif isinstance(ev, Cleared):
            out.append({"type": "AllBlocksCleared"})
    return out


def _extra_keys(ev: Stored) -> list[str] | None:
    """vLLM's per-block extra hash keys: the adapter name on every block, the cache_salt on the first."""
    keys = ([ev.lora] if ev.lora else []) + ([ev.cache_salt] if ev.cache_salt else [])
    return keys or None


def encode_message(
    topic: str, seq: int, timestamp: float, events: list[dict[str, Any]], rank: int = 0
) -> list[bytes]:
    """The three frames of one message."""
    payload = msgpack.packb([timestamp, events, rank], use_bin_type=True)
    return [topic.encode("utf-8"), seq.to_bytes(8, "big"), payload]


class KVEventPublisher:
    """PUB socket + replay ROUTER of one simulated pod. Call `publish` after each engine step."""

    def __init__(
        self, config: KVEventsConfig, block_size: int, lora_ids: dict[str, int] | None = None
    ) -> None:
        self.config = config
        self.block_size = block_size
        self._lora_ids = dict(lora_ids or {})
        self._seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        # A plain PUB socket (a send never waits: past the high-water mark ZeroMQ drops) and an asyncio
        # ROUTER for replays, on one context.
        self._ctx = zmq.Context()
        self._pub: zmq.Socket[bytes] = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._replay: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        if binds(config.endpoint):
            self._pub.bind(config.endpoint)
        else:
            self._pub.connect(config.endpoint)
        if config.replay_endpoint is not None:
            self._replay = zmq.asyncio.Context.shadow(self._ctx).socket(zmq.ROUTER)
            self._replay.bind(config.replay_endpoint)

    @property
    def endpoint(self) -> str:
        """The PUB endpoint as bound (a port-0 endpoint resolved) or as connected to."""
        last = self._pub.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) and last else self.config.endpoint

    @property
    def replay_endpoint(self) -> str | None:
        if self._replay is None:
            return None
        last = self._replay.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else self.config.replay_endpoint

    def start(self) -> None:
        """Serve replay requests in the running event loop."""
        if self._replay is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay(self._replay))

    def restart(self) -> None:
        """A pod restart: a new vLLM process numbers its messages from 0 and has nothing to replay."""
        self._seq = 0
        self._buffer.clear()

    def publish(self, events: list[CacheEvent]) -> int | None:
        """Send one message for a step's cache events; its sequence number, or None when there were none."""
        wire = wire_events(events, self.block_size, self._lora_ids)
        if not wire:
            return None
        seq = self._seq
        self._seq += 1
        frames = encode_message(self.config.topic, seq, time.time(), wire)
        self._pub.send_multipart(frames, flags=zmq.NOBLOCK)
        self._buffer.append((seq, frames[2]))
        return seq

    async def _serve_replay(self, sock: zmq.asyncio.Socket) -> None:
        topic = self.config.topic.encode("utf-8")
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3:
                continue  # vLLM logs and ignores malformed requests
            client, _empty, start = frames
            start_seq = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await sock.send_multipart([client, b"", topic, seq.to_bytes(8, "big"), payload])
            await sock.send_multipart([client, b"", b"", END_SEQ, b""])

    def sources(self) -> dict[str, dict[str, Any]]:
        """`GET /kv_event_sources` as vLLM 0.32 answers it: data-parallel rank -> its events config, the
        endpoints as configured (a wildcard host stays: subscribers dial the pod's address), a port the
        simulator picked itself (`*` or 0 in the config) filled in."""
        replay = self.replay_endpoint
        return {
            "0": {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": _as_configured(self.config.endpoint, self.endpoint),
                "replay_endpoint": None
                if replay is None or self.config.replay_endpoint is None
                else _as_configured(self.config.replay_endpoint, replay),
                "buffer_steps": self.config.buffer_steps,
                "hwm": self.config.hwm,
                "max_queue_size": 100_000,
                "topic": self.config.topic,
            }
        }

    async def close(self) -> None:
        """Stop serving replays and close the sockets."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
        self._ctx.term()


def _as_configured(configured: str, actual: str) -> str:
    """`configured` as vLLM reports it, with the port the simulator picked when the config left it open.

    A port `*` or 0 is the simulator's own extension, always bound: it is reported with a wildcard host, the
    way vLLM reports every endpoint it binds (a plain host there would mean vLLM connects)."""
    base, _, port = configured.rpartition(":")
    if port not in ("*", "0") or not base.startswith("tcp://"):
        return configured
    return f"tcp://*:{actual.rpartition(':')[2]}"
