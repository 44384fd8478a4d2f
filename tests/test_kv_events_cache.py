"""Prefix caching as vLLM does it at any block size, decode blocks included, and the events it records."""

from __future__ import annotations

import pytest

from bench.sim.engine import EngineCore, SimRequest
from bench.sim.kv_cache import BlockPool, Cleared, Removed, Stored, block_hashes
from bench.sim.profiles import get_profile, with_overrides


def _run(engine: EngineCore, req: SimRequest, now: float = 0.0) -> SimRequest:
    engine.add_request(req)
    for _ in range(10_000):
        step, _out = engine.run_step(now)
        if step is None:
            break
        now = step.end
    assert req.finish_reason is not None
    return req


@pytest.mark.parametrize(("block_size", "second_hit"), [(128, 128), (16, 240), (7, 252), (256, 0)])
def test_same_256_ids_twice_hit_all_but_the_block_holding_the_last_token(block_size, second_hit):
    engine = EngineCore(with_overrides(get_profile("cpu-tiny"), block_size=block_size, max_model_len=4096))
    ids = list(range(1000, 1256))
    first = _run(engine, SimRequest("a", ids, 1, 0.0))
    second = _run(engine, SimRequest("b", ids, 1, 0.0))
    assert (first.num_cached_tokens, second.num_cached_tokens) == (0, second_hit)


def test_partial_last_block_is_never_a_hit():
    engine = EngineCore(with_overrides(get_profile("cpu-tiny"), max_model_len=4096))
    ids = list(range(300))  # 2 full blocks of 128 + 44
    _run(engine, SimRequest("a", ids, 1, 0.0))
    assert _run(engine, SimRequest("b", ids, 1, 0.0)).num_cached_tokens == 256


def test_previous_answer_is_a_hit_in_the_next_round():
    profile = with_overrides(get_profile("tiny"), block_size=16)
    engine = EngineCore(profile)
    prompt = list(range(5000, 5040))  # 40 tokens: 2 full blocks
    round1 = _run(engine, SimRequest("r1", prompt, 60, 0.0))
    assert len(round1.output_ids) == 60
    # vLLM computed 40 + 59 tokens (the last sampled one never ran through the model): 6 full blocks.
    next_prompt = prompt + round1.output_ids + list(range(7000, 7020))
    round2 = _run(engine, SimRequest("r2", next_prompt, 1, 0.0))
    assert round2.num_cached_tokens == 96


def test_output_token_callback_gives_the_decode_token_ids():
    engine = EngineCore(get_profile("tiny"))
    req = _run(engine, SimRequest("a", [1, 2, 3], 5, 0.0, output_token=lambda i: 100 + i))
    assert req.output_ids == [100, 101, 102, 103, 104]


def test_pool_records_stored_removed_and_cleared():
    pool = BlockPool(2, block_size=4, record_events=True)
    a, b = pool.allocate(2)
    h = block_hashes(list(range(8)), 4)
    pool.cache_block(a, h[0], None, (0, 1, 2, 3))
    pool.cache_block(b, h[1], h[0], (4, 5, 6, 7))
    pool.cache_block(b, h[1], h[0], (4, 5, 6, 7))  # already cached: no second event
    assert pool.reset_prefix_cache() is False  # blocks in use
    pool.release([a, b])
    pool.allocate(1)  # evicts the tail block first
    assert pool.drain_events() == [
        Stored(h[0], None, (0, 1, 2, 3)),
        Stored(h[1], h[0], (4, 5, 6, 7)),
        Removed(h[1]),
    ]
    assert pool.drain_events() == []
    pool.release([b])
    assert pool.reset_prefix_cache() is True
    assert pool.drain_events() == [Cleared()] and pool.cached_hashes() == set()


def test_token_ids_above_32_bits_hash():
    assert len(block_hashes([2**40] * 32, 16)) == 2
