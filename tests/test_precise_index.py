"""The precise index: keys from token ids, rebuilt from KV events exactly as the pod's cache holds them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.sim.engine import EngineCore, SimRequest
from bench.sim.kv_cache import Stored, block_hashes, hash_extra_key
from bench.sim.kv_events import encode_message, wire_events
from bench.sim.profiles import get_profile
from epp.kv_events.index import BlockIndex
from epp.kv_events.precise_index import PreciseIndex, block_keys
from epp.kv_events.sink import KVEventSink
from epp.kv_events.wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventMessage,
    decode_message,
)

FIXTURE = Path(__file__).parent / "fixtures" / "vllm" / "vllm-0.32" / "kv-events-small-cache.jsonl"
BLOCK = 4
PROFILE = dataclasses.replace(
    get_profile("tiny"), block_size=BLOCK, num_gpu_blocks=14, max_num_seqs=3, max_num_batched_tokens=24
)


def msg(*events: object, rank: int | None = 0, seq: int = 0) -> EventMessage:
    return EventMessage("kv@t", seq, 0.0, tuple(events), rank)  # type: ignore[arg-type]


def stored(hashes, tokens, parent=None, size=2, **kw) -> BlockStored:
    return BlockStored(tuple(hashes), parent, tuple(tokens), size, medium="GPU", **kw)


def _sink(index: KVEventSink) -> KVEventSink:
    return index


_request = st.tuples(
    st.integers(0, 3),  # shared system prefix
    st.lists(st.integers(0, 5), min_size=0, max_size=30),  # own tokens (small alphabet: repeats)
    st.integers(1, 12),  # max_tokens (decode blocks get cached too)
    st.sampled_from([None, None, "ad"]),  # LoRA
    st.sampled_from([None, None, "s1", "ad"]),  # cache_salt (one equal to the adapter's name)
    st.integers(0, 5),  # steps before the next arrival
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_request, min_size=1, max_size=25), st.booleans())
def test_index_equals_the_simulators_cache_after_a_random_workload(workload, reset_at_end):
    engine = EngineCore(PROFILE, max_loras=1, record_kv_events=True)
    index = PreciseIndex()
    _sink(index).mark_synced("p")
    # sim hash -> (the prefix it ends, lora, salt)
    expected: dict[int, tuple[tuple[int, ...], str | None, str | None]] = {}
    prompts: list[tuple[list[int], str | None, str | None]] = []
    seq = 0

    def step(now: float) -> float:
        nonlocal seq
        s, _out = engine.run_step(now)
        events = engine.pool.drain_events()
        for ev in events:  # what the pool really cached, keyed here independently of the index's path
            if isinstance(ev, Stored):
                if ev.parent_hash is None:
                    expected[ev.block_hash] = (ev.token_ids, ev.lora, ev.cache_salt)
                else:
                    prefix, lora, salt = expected[ev.parent_hash]
                    expected[ev.block_hash] = (prefix + ev.token_ids, lora, salt)
        wire = wire_events(events, BLOCK, {"ad": 1})
        if wire:
            index.apply("p", decode_message(encode_message("kv@sim", seq, now, wire)))
            seq += 1
        want = set()
        for h in engine.pool.cached_hashes():
            prefix, lora, salt = expected[h]
            want.add(block_keys(prefix, BLOCK, lora, salt)[-1])
        assert index.keys("p") == want
        assert index.entries("p") == len(want)
        for ids, lora, salt in prompts:
            held = len(engine.pool.lookup(block_hashes(ids, BLOCK, hash_extra_key(lora, salt)), 10_000))
            assert index.match(block_keys(ids, BLOCK, lora, salt), ["p"]) == {"p": held}
        return s.end if s is not None else now + 0.01

    now = 0.0
    for i, (prefix, own, max_tokens, lora, salt, wait) in enumerate(workload):
        ids = [900 + prefix] * 8 + own
        prompts.append((ids, lora, salt))
        engine.add_request(SimRequest(f"r{i}", ids, max_tokens, now, lora=lora, cache_salt=salt))
        for _ in range(wait):
            now = step(now)
    for _ in range(5_000):
        if not engine.has_work():
            break
        now = step(now)
    assert not engine.has_work()
    assert index.stats.orphans == 0 and index.stats.malformed == 0
    if reset_at_end:
        assert engine.pool.reset_prefix_cache()
        step(now)
        assert index.keys("p") == set() and index.entries("p") == 0
    assert index.is_synced("p")


def _fixture_messages() -> list[EventMessage]:
    out = []
    for line in FIXTURE.read_text().splitlines():
        d = json.loads(line)
        frames = [d["topic"].encode(), d["seq_be"].to_bytes(8, "big"), msgpack.packb(d["payload"])]
        out.append(decode_message(frames))
    return out


def test_real_vllm_capture_applies_with_no_stale_entries():
    messages = _fixture_messages()
    index, hashes = PreciseIndex(), BlockIndex()
    keys_of: dict[int, int] = {}  # engine hash -> the key of its block, computed from its prompt
    for m in messages[:-1]:
        index.apply("pod2", m)
        hashes.apply(m.events)
        for ev in m.events:
            if isinstance(ev, BlockStored):
                assert ev.extra_keys == (None,) * 7
                keys_of.update(zip(ev.block_hashes, block_keys(ev.token_ids, 128), strict=True))
        # One entry per block the engine holds (evictions take prompts' tails); no key of an evicted block.
        assert index.entries("pod2") == len(hashes.hashes)
        assert index.keys("pod2") == {keys_of[h] for h in hashes.hashes}
    assert index.block_size("pod2") == 128
    assert index.stats.orphans == 0 and index.stats.malformed == 0
    first = messages[0].events[0]
    assert isinstance(first, BlockStored)
    # The last prompt before the reset re-stored the first one: all of its 7 blocks are held.
    assert index.match(block_keys(first.token_ids, 128), ["pod2", "other"]) == {"pod2": 7, "other": 0}
    assert isinstance(messages[-1].events[0], AllBlocksCleared)
    index.apply("pod2", messages[-1])
    assert index.keys("pod2") == set() and index.entries("pod2") == 0
    assert index.match(block_keys(first.token_ids, 128), ["pod2"]) == {"pod2": 0}


def test_keys_chain_and_fold_lora_and_salt_into_the_first_block():
    ids = list(range(8))
    base = block_keys(ids, 2)
    assert len(base) == 4 and block_keys(ids[:5], 2) == base[:2]  # a partial block has no key
    assert block_keys(ids, 2, max_blocks=3) == base[:3]
    assert len({base[0], block_keys(ids, 2, lora="ad")[0], block_keys(ids, 2, cache_salt="ad")[0]}) == 3
    assert block_keys([9, *ids[1:]], 2)[1:] != base[1:]  # chained: a changed block changes every later key
    assert block_keys([-1, 2], 2) == []


def test_lora_and_salt_from_the_event_key_the_blocks():
    index = PreciseIndex()
    ev = stored([1, 2], [5, 6, 7, 8], lora_name="ad", lora_id=1, extra_keys=(("ad", "s"), ("ad",)))
    index.apply("p", msg(ev))
    assert index.match(block_keys([5, 6, 7, 8], 2, "ad", "s"), ["p"]) == {"p": 2}
    assert index.match(block_keys([5, 6, 7, 8], 2, "ad"), ["p"]) == {"p": 0}
    assert index.match(block_keys([5, 6, 7, 8], 2), ["p"]) == {"p": 0}
    # An adapter known only by id: no key the picker could compute, so nothing is credited.
    index.apply("p", msg(stored([3], [1, 1], lora_id=2)))
    assert index.stats.malformed == 1 and index.entries("p") == 2


def test_a_key_held_by_two_ranks_or_groups_leaves_with_its_last_holder():
    index = PreciseIndex()
    keys = block_keys([1, 2, 3, 4], 2)
    index.apply("p", msg(stored([10, 11], [1, 2, 3, 4]), rank=0))
    index.apply("p", msg(stored([20, 21], [1, 2, 3, 4]), rank=1))  # another rank hashes differently
    index.apply("p", msg(stored([10, 11], [1, 2, 3, 4], group_idx=1), rank=0))  # same hashes, group 1
    assert index.entries("p") == 6 and index.match(keys, ["p"]) == {"p": 2}
    index.apply("p", msg(BlockRemoved((10, 11), "GPU", 0), rank=0))
    index.apply("p", msg(BlockRemoved((21,), "GPU", 0), rank=1))
    assert index.match(keys, ["p"]) == {"p": 2}  # group 1 of rank 0 and block 20 of rank 1 still hold them
    index.apply("p", msg(BlockRemoved((10, 11), "GPU", 1), rank=0))
    assert index.match(keys, ["p"]) == {"p": 1} and index.entries("p") == 1
    index.apply("p", msg(AllBlocksCleared(), rank=1))
    assert index.keys("p") == set() and index.entries("p") == 0


def test_children_chain_on_the_parents_key_and_orphans_are_skipped():
    index = PreciseIndex()
    index.apply("p", msg(stored([1], [1, 2])))
    index.apply("p", msg(stored([2, 3], [3, 4, 5, 6], parent=1)))
    assert index.match(block_keys([1, 2, 3, 4, 5, 6], 2), ["p"]) == {"p": 3}
    index.apply("p", msg(stored([9], [7, 8], parent=77)))  # its parent's message was lost
    assert index.stats.orphans == 1 and index.entries("p") == 3
    index.apply("p", msg(stored([4], [7], parent=3)))  # token ids do not fill the block
    assert index.stats.malformed == 1
    index.apply("p", msg(BlockStored((5,), None, (1, 2), 2, medium="CPU")))  # offloaded: not a GPU hit
    assert index.stats.other_media == 1 and index.entries("p") == 3


def test_the_per_pod_bound_drops_the_oldest_and_never_over_credits():
    index = PreciseIndex(max_blocks_per_pod=10)
    prompts = [[p * 100 + t for t in range(6)] for p in range(10)]
    for n, ids in enumerate(prompts):
        index.apply("p", msg(stored([n * 10 + 1, n * 10 + 2, n * 10 + 3], ids)))
    assert index.entries("p") == 10 and index.stats.dropped == 20
    assert index.match(block_keys(prompts[-1], 2), ["p"]) == {"p": 3}
    assert index.match(block_keys(prompts[0], 2), ["p"]) == {"p": 0}
    held = index.keys("p")
    every = {k for ids in prompts for k in block_keys(ids, 2)}
    assert len(held) == 10 and held <= every
    index.apply("p", msg(BlockRemoved((1, 2, 3), "GPU", 0)))  # removals of dropped entries are harmless
    assert index.entries("p") == 10


def test_reset_and_sync_state():
    index = PreciseIndex()
    assert not index.is_synced("p")  # never seen
    index.apply("p", msg(stored([1], [1, 2])))
    assert not index.is_synced("p")  # events alone do not vouch for a complete view
    index.mark_synced("p")
    assert index.is_synced("p")
    index.reset("p", synced=False)
    assert not index.is_synced("p") and index.keys("p") == set() and index.entries("p") == 0
    assert index.block_size("p") == 2  # the pod's block size survives a reset
    index.reset("p", synced=True)
    assert index.is_synced("p")
    index.forget("p")
    assert not index.is_synced("p") and index.pods() == []


def test_speculative_keys_expire_and_events_confirm_them():
    now = [0.0]
    index = PreciseIndex(clock=lambda: now[0])
    keys = block_keys([1, 2, 3, 4], 2)
    index.speculate("p", keys, 2.0)
    assert index.match(keys, ["p"]) == {"p": 2} and index.keys("p") == set()
    now[0] = 2.5
    assert index.match(keys, ["p"]) == {"p": 0}
    index.speculate("p", keys, 2.0)
    index.apply("p", msg(stored([1, 2], [1, 2, 3, 4])))
    now[0] = 10.0
    assert index.match(keys, ["p"]) == {"p": 2}  # confirmed by the pod's events, no longer speculative
    index.reset("p", synced=True)
    index.speculate("p", keys, 2.0)
    index.apply("p", msg(AllBlocksCleared()))
    assert index.match(keys, ["p"]) == {"p": 0}


def test_speculative_credit_is_bounded():
    index = PreciseIndex(max_speculative_per_pod=3)
    keys = block_keys(list(range(12)), 2)
    index.speculate("p", keys, 60.0)
    assert index.match(keys, ["p"]) == {"p": 0}  # only the last 3 of 6 kept: the first is gone
    assert index.match(keys[3:], ["p"]) == {"p": 3}


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_blocks_per_pod"):
        PreciseIndex(max_blocks_per_pod=0)


def test_a_duplicate_copy_keeps_the_key_until_its_own_removal():
    # vLLM caches a second block with the same content under the same hash and removes each copy alone.
    index = PreciseIndex()
    keys = block_keys([1, 2], 2)
    index.apply("p", msg(stored([1], [1, 2])))
    index.apply("p", msg(stored([1], [1, 2])))
    index.apply("p", msg(BlockRemoved((1,), "GPU", 0)))
    assert index.match(keys, ["p"]) == {"p": 1}
    index.apply("p", msg(BlockRemoved((1,), "GPU", 0)))
    assert index.match(keys, ["p"]) == {"p": 0} and index.entries("p") == 0


def test_a_child_stored_after_its_parent_was_evicted_is_still_keyed():
    # The simulator (like vLLM) can store a block whose parent was just evicted while a request held a copy.
    index = PreciseIndex()
    index.apply("p", msg(stored([1], [1, 2])))
    index.apply("p", msg(BlockRemoved((1,), "GPU", 0)))
    index.apply("p", msg(stored([2], [3, 4], parent=1)))
    assert index.stats.orphans == 0 and index.keys("p") == {block_keys([1, 2, 3, 4], 2)[1]}
    index.apply("p", msg(stored([1], [1, 2])))  # the parent comes back: the whole prefix matches again
    assert index.match(block_keys([1, 2, 3, 4], 2), ["p"]) == {"p": 2}


def test_over_the_bound_the_oldest_sixteenth_goes_at_once():
    index = PreciseIndex(max_blocks_per_pod=64)
    for n in range(200):
        index.apply("p", msg(stored([n + 1], [n, n])))
        assert 60 <= index.entries("p") <= 64 or n < 64
    assert index.match(block_keys([199, 199], 2), ["p"]) == {"p": 1}  # the newest stay
    assert index.match(block_keys([0, 0], 2), ["p"]) == {"p": 0}
    assert index.stats.dropped == 200 - index.entries("p")


def test_the_cost_bench_measures_memory_ingestion_and_decisions():
    from bench import precise_index_cost

    per_block, entries = precise_index_cost.memory_per_block(6_400)
    assert entries == 6_400 and 50 < per_block < 1_000
    stored, removed = precise_index_cost.ingestion(1)
    assert stored > 0 and removed > 0
    seconds, tokens = precise_index_cost.decision(2, pods=4)
    assert seconds > 0 and tokens > 1_000


def test_blocks_stored_after_a_clear_in_the_same_message_are_kept():
    index = PreciseIndex()
    index.apply("p", msg(stored([1], [1, 2])))
    index.apply("p", msg(AllBlocksCleared(), stored([2], [3, 4]), stored([3], [5, 6], parent=2)))
    assert index.keys("p") == set(block_keys([3, 4, 5, 6], 2)) and index.entries("p") == 2
    index.apply("p", msg(BlockRemoved((3,), "GPU", 0)))
    assert index.keys("p") == {block_keys([3, 4], 2)[0]}
