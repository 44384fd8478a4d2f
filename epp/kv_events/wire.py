"""Decode vLLM's KV-cache event messages (`--kv-events-config`, ZeroMQ PUB) into typed events.

A message is three frames: the topic, an 8-byte big-endian sequence number (from 0) and a msgpack payload
`[timestamp, [event, ...], data_parallel_rank]`. vLLM 0.32 encodes each event as a map whose first key is
`type`; older releases sent tagged arrays `[type, field, ...]`, which are accepted too. Hashes are uint64
(some releases send them as signed int64; they are normalised to uint64 here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

END_SEQ = -1  # replay's end marker: the sequence frame is (-1).to_bytes(8, "big", signed=True)

_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium")
_REMOVED_FIELDS = ("block_hashes", "medium")


class KVEventDecodeError(ValueError):
    """A message that is not a well-formed vLLM KV-event message."""


@dataclass(frozen=True)
class BlockStored:
    """Full blocks that became findable in the prefix cache; `parent_block_hash` None for a prompt start."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None
    # Per block: vLLM's extra hash keys (adapter name, multimodal hashes, first block's cache_salt) or None.
    extra_keys: tuple[tuple[Any, ...] | None, ...] | None = None


@dataclass(frozen=True)
class BlockRemoved:
    """Blocks evicted from the cache."""

    block_hashes: tuple[int, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True)
class AllBlocksCleared:
    """The whole prefix cache was reset."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True)
class EventMessage:
    """One decoded message: a batch of events from one engine step."""

    topic: str
    seq: int
    timestamp: float
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None


def _hash(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KVEventDecodeError(f"block hash must be an integer, got {value!r}")
    return value % (1 << 64)  # int64 on the wire in some releases: same 64 bits


def _hashes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise KVEventDecodeError("block_hashes must be a list")
    return tuple(_hash(v) for v in value)


def _opt_int(value: Any, name: str) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise KVEventDecodeError(f"{name} must be an integer or null")


def _opt_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise KVEventDecodeError(f"{name} must be a string or null")


def _extra_keys(value: Any) -> tuple[tuple[Any, ...] | None, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise KVEventDecodeError("extra_keys must be a list or null")
    return tuple(None if k is None else tuple(k) if isinstance(k, list) else (k,) for k in value)


def _as_map(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        fields = {"BlockStored": _STORED_FIELDS, "BlockRemoved": _REMOVED_FIELDS}.get(raw[0], ())
        return {"type": raw[0], **dict(zip(fields, raw[1:], strict=False))}
    raise KVEventDecodeError(f"an event must be a map or a tagged array, got {type(raw).__name__}")


def decode_event(raw: Any) -> KVEvent:
    """One event from its msgpack-decoded form."""
    event = _as_map(raw)
    kind = event.get("type")
    try:
        if kind == "BlockStored":
            parent = event["parent_block_hash"]
            token_ids = event["token_ids"]
            if not isinstance(token_ids, list) or not all(isinstance(t, int) for t in token_ids):
                raise KVEventDecodeError("token_ids must be a list of integers")
            block_size = event["block_size"]
            if not isinstance(block_size, int) or block_size < 1:
                raise KVEventDecodeError("block_size must be a positive integer")
            return BlockStored(
                block_hashes=_hashes(event["block_hashes"]),
                parent_block_hash=None if parent is None else _hash(parent),
                token_ids=tuple(token_ids),
                block_size=block_size,
                lora_id=_opt_int(event.get("lora_id"), "lora_id"),
                medium=_opt_str(event.get("medium"), "medium"),
                lora_name=_opt_str(event.get("lora_name"), "lora_name"),
                group_idx=_opt_int(event.get("group_idx"), "group_idx"),
                extra_keys=_extra_keys(event.get("extra_keys")),
            )
        if kind == "BlockRemoved":
            return BlockRemoved(
                block_hashes=_hashes(event["block_hashes"]),
                medium=_opt_str(event.get("medium"), "medium"),
                group_idx=_opt_int(event.get("group_idx"), "group_idx"),
            )
    except KeyError as exc:
        raise KVEventDecodeError(f"{kind} event without {exc.args[0]!r}") from None
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    raise KVEventDecodeError(f"unknown KV event type {kind!r}")


def decode_seq(frame: bytes) -> int:
    """The sequence number frame (8 bytes, big-endian, signed so that replay's end marker is -1)."""
    if len(frame) != 8:
        raise KVEventDecodeError(f"sequence frame has {len(frame)} bytes, expected 8")
    return int.from_bytes(frame, "big", signed=True)


def decode_payload(payload: bytes) -> tuple[float, tuple[KVEvent, ...], int | None]:
    """(timestamp, events, data-parallel rank) of a msgpack payload."""
    try:
        batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise KVEventDecodeError(f"payload is not msgpack: {exc}") from None
    if not isinstance(batch, list) or len(batch) not in (2, 3):
        raise KVEventDecodeError("payload must be [timestamp, events] or [timestamp, events, dp_rank]")
    ts, events = batch[0], batch[1]
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not isinstance(events, list):
        raise KVEventDecodeError("payload must start with a timestamp and a list of events")
    rank = _opt_int(batch[2], "data_parallel_rank") if len(batch) == 3 else None
    return float(ts), tuple(decode_event(e) for e in events), rank


def decode_message(frames: list[bytes]) -> EventMessage:
    """Decode a PUB message: [topic, seq, payload]."""
    if len(frames) != 3:
        raise KVEventDecodeError(f"message has {len(frames)} frames, expected 3")
    topic, seq, payload = frames
    ts, events, rank = decode_payload(payload)
    return EventMessage(topic.decode("utf-8", "replace"), decode_seq(seq), ts, events, rank)


def replay_request(start_seq: int) -> list[bytes]:
    """Frames a DEALER sends to the replay ROUTER to get every buffered message from `start_seq` on."""
    return [b"", start_seq.to_bytes(8, "big")]


def decode_replay_reply(frames: list[bytes]) -> EventMessage | None:
    """One replay reply as a DEALER receives it, [b"", topic, seq, payload]; None for the end marker."""
    if len(frames) != 4 or frames[0] != b"":
        raise KVEventDecodeError(f"replay reply has {len(frames)} frames, expected 4 after a delimiter")
    if decode_seq(frames[2]) == END_SEQ:
        return None
    return decode_message(frames[1:])
