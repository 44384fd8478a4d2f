"""Property: replaying the simulator's KV events through epp's decoder rebuilds its cache exactly."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.sim.engine import EngineCore, SimRequest
from bench.sim.kv_events import encode_message, wire_events
from bench.sim.profiles import get_profile
from epp.kv_events.index import BlockIndex
from epp.kv_events.wire import decode_message

BLOCK = 4
PROFILE = dataclasses.replace(
    get_profile("tiny"), block_size=BLOCK, num_gpu_blocks=14, max_num_seqs=3, max_num_batched_tokens=24
)

_request = st.tuples(
    st.integers(0, 3),  # shared system prefix
    st.lists(st.integers(0, 5), min_size=0, max_size=30),  # own tokens (small alphabet: repeats, duplicates)
    st.integers(1, 16),  # max_tokens
    st.sampled_from([None, None, "ad"]),  # LoRA keys the hashes
    st.integers(0, 5),  # steps to wait before the next arrival
    st.booleans(),  # abort it a little later
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_request, min_size=1, max_size=25), st.booleans())
def test_replayed_events_rebuild_the_cache(workload, reset_at_end):
    engine = EngineCore(PROFILE, max_loras=1, record_kv_events=True)
    index = BlockIndex()
    seq = 0

    def step(now: float) -> float:
        nonlocal seq
        s, _out = engine.run_step(now)
        events = wire_events(engine.pool.drain_events(), BLOCK, {"ad": 1})
        if events:
            msg = decode_message(encode_message("kv@sim", seq, now, events))
            assert msg.seq == seq
            index.apply(msg.events)
            seq += 1
        assert index.hashes == engine.pool.cached_hashes()
        return s.end if s is not None else now + 0.01

    now = 0.0
    to_abort: list[SimRequest] = []
    for i, (prefix, own, max_tokens, lora, wait, abort) in enumerate(workload):
        prompt = [900 + prefix] * 8 + own
        req = SimRequest(f"r{i}", prompt, max_tokens, now, lora=lora)
        engine.add_request(req)
        if abort:
            to_abort.append(req)
        for _ in range(wait):
            now = step(now)
        if len(to_abort) > 1:
            engine.abort(to_abort.pop(0))
    for _ in range(5_000):
        if not engine.has_work():
            break
        now = step(now)
    assert not engine.has_work()
    if reset_at_end:
        assert engine.pool.reset_prefix_cache()
        step(now)
        assert index.hashes == set()
