"""The KV-event decoder on real vLLM 0.32 messages and on the simulator's, with the same code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from bench.sim.kv_cache import Cleared, Removed, Stored
from bench.sim.kv_events import encode_message, wire_events
from epp.kv_events.index import BlockIndex
from epp.kv_events.wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventDecodeError,
    decode_message,
    decode_replay_reply,
)

CAPTURE = Path(__file__).parent / "fixtures" / "vllm" / "vllm-0.32" / "kv-events-small-cache.jsonl"


def _captured() -> list[tuple[dict[str, Any], list[bytes]]]:
    """Each captured message with its frames rebuilt: topic, 8-byte big-endian seq, msgpack payload."""
    out = []
    for line in CAPTURE.read_text().splitlines():
        rec = json.loads(line)
        frames = [rec["topic"].encode(), rec["seq_be"].to_bytes(8, "big"), msgpack.packb(rec["payload"])]
        out.append((rec, frames))
    return out


def test_rebuilt_frames_match_the_captured_bytes():
    for rec, frames in _captured():
        assert [len(f) for f in frames] == rec["frame_lens"]
        for frame, head in zip(frames, rec["frames_hex_head"], strict=True):
            assert frame.hex().startswith(head)


def test_decodes_every_real_message():
    messages = [decode_message(frames) for _rec, frames in _captured()]
    assert [m.seq for m in messages] == list(range(len(messages)))
    assert {m.topic for m in messages} == {"kv@pod2@tiny"}
    assert all(m.data_parallel_rank == 0 for m in messages)
    first = messages[0].events[0]
    assert isinstance(first, BlockStored)
    assert first.parent_block_hash is None and first.block_size == 128 and first.medium == "GPU"
    assert len(first.block_hashes) == 7 and len(first.token_ids) == 7 * 128
    assert first.block_hashes[0] == 13627697438798138557  # uint64 above 2**63 kept as is
    kinds = [type(e) for m in messages for e in m.events]
    assert BlockRemoved in kinds and kinds[-1] is AllBlocksCleared
    index = BlockIndex()
    for m in messages[:-1]:
        index.apply(m.events)
    assert index.hashes  # a small cache: some blocks survive the evictions
    index.apply(messages[-1].events)
    assert index.hashes == set()


def test_simulator_messages_have_vllms_layout():
    real = msgpack.unpackb(_captured()[0][1][2])
    events = wire_events([Stored(1, None, tuple(range(128))), Stored(2, 1, tuple(range(128)))], 128, {})
    sim = msgpack.unpackb(encode_message("kv@pod2@tiny", 0, 1.0, events)[2])
    assert list(sim[1][0]) == list(real[1][0])  # same keys in the same order, `type` first
    assert type(sim[0]) is float and sim[2] == 0
    stored = decode_message(encode_message("t", 5, 1.0, events)).events
    assert stored == (
        BlockStored(
            (1, 2), None, tuple(range(128)) * 2, 128, medium="GPU", group_idx=0, extra_keys=(None, None)
        ),
    )


def test_removed_and_cleared_round_trip():
    events = wire_events([Removed(7), Removed(2**64 - 1), Cleared()], 16, {})
    msg = decode_message(encode_message("", 3, 2.5, events))
    assert msg.seq == 3 and msg.timestamp == 2.5
    assert msg.events == (
        BlockRemoved((7,), "GPU", 0),
        BlockRemoved((2**64 - 1,), "GPU", 0),
        AllBlocksCleared(),
    )


def test_signed_hashes_and_tagged_arrays_of_older_releases():
    payload = msgpack.packb(
        [1.0, [["BlockStored", [-1], None, [1, 2], 2, None, "gpu"], ["AllBlocksCleared"]]]
    )
    msg = decode_message([b"", (0).to_bytes(8, "big"), payload])
    assert msg.events[0] == BlockStored((2**64 - 1,), None, (1, 2), 2, medium="gpu")
    assert msg.data_parallel_rank is None


@pytest.mark.parametrize(
    "frames",
    [
        [b"t", b"\x00" * 8],
        [b"t", b"\x00" * 4, msgpack.packb([1.0, []])],
        [b"t", b"\x00" * 8, b"\xc1"],
        [b"t", b"\x00" * 8, msgpack.packb({"ts": 1})],
        [b"t", b"\x00" * 8, msgpack.packb([1.0, [{"type": "Nope"}]])],
        [b"t", b"\x00" * 8, msgpack.packb([1.0, [{"type": "BlockRemoved"}]])],
        [b"t", b"\x00" * 8, msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": ["x"]}]])],
    ],
)
def test_malformed_messages_raise_decode_errors(frames):
    with pytest.raises(KVEventDecodeError):
        decode_message(frames)


def test_replay_end_marker():
    assert decode_replay_reply([b"", b"", (-1).to_bytes(8, "big", signed=True), b""]) is None
