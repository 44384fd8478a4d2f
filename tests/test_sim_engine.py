"""Unit tests of the simulator's engine core, KV block pool and tokenizer (no HTTP, no sleeping)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.sim.clock import SimClock
from bench.sim.engine import EngineCore, SimRequest
from bench.sim.kv_cache import BlockPool, block_hashes
from bench.sim.profiles import PROFILES, get_profile
from epp.tokenization.simulated import Tokenizer

TINY = get_profile("tiny")


def _req(rid: str, n: int, max_tokens: int = 4, start: int = 0, lora: str | None = None) -> SimRequest:
    return SimRequest(rid, list(range(start, start + n)), max_tokens, arrival=0.0, lora=lora)


def _drain(engine: EngineCore, now: float = 0.0, limit: int = 10_000) -> float:
    for _ in range(limit):
        step, _ = engine.run_step(now)
        if step is None:
            return now
        now = step.end
    raise AssertionError("engine did not drain")


def test_block_hashes_are_chained_and_keyed():
    a = block_hashes(list(range(64)), 16)
    b = block_hashes(list(range(64)) + [999] * 10, 16)
    assert len(a) == 4 and b[:4] == a  # the trailing partial block has no hash
    changed = block_hashes([7, *range(1, 64)], 16)
    assert all(
        x != y for x, y in zip(a, changed, strict=True)
    )  # a change in block 0 changes every later hash
    assert block_hashes(list(range(64)), 16, "adapter") != a  # a LoRA's blocks never match the base model's


def test_pool_evicts_least_recently_freed_and_tail_first():
    pool = BlockPool(4)
    first = pool.allocate(2)
    pool.cache_block(first[0], 100)
    pool.cache_block(first[1], 101)
    second = pool.allocate(2)
    pool.cache_block(second[0], 200)
    pool.release(first)  # freed first -> evicted first; its tail block (101) goes before 100
    pool.release(second)
    assert pool.usage() == 0.0 and pool.num_cached == 3
    pool.allocate(1)
    assert not pool.is_cached(101) and pool.is_cached(100)
    pool.allocate(1)
    assert not pool.is_cached(100) and pool.is_cached(200)
    assert pool.evictions == 2


def test_prefix_hit_skips_prefill_but_always_computes_last_token():
    engine = EngineCore(TINY)
    engine.add_request(_req("a", 64))
    _drain(engine)
    engine.add_request(_req("b", 64))
    step = engine.schedule(100.0)
    assert step is not None
    # 4 full blocks are cached, but the last token must be computed: 3 blocks hit, 16 tokens prefilled.
    assert step.prefill_tokens == 16
    assert engine.stats.prefix_hits == 48 and engine.stats.prefix_queries == 128


def test_second_identical_request_has_lower_ttft():
    engine = EngineCore(TINY)
    first = _req("a", 600)
    engine.add_request(first)
    t = _drain(engine)
    second = _req("b", 600)
    second.arrival = t
    engine.add_request(second)
    _drain(engine, t)
    assert first.first_token_at is not None and second.first_token_at is not None
    assert second.first_token_at - second.arrival < (first.first_token_at - first.arrival) / 2


def test_chunked_prefill_respects_token_budget():
    engine = EngineCore(TINY)  # max_num_batched_tokens 256
    req = _req("long", 600)
    engine.add_request(req)
    prefills = []
    for _ in range(3):
        step, _outputs = engine.run_step(0.0)
        assert step is not None
        prefills.append(step.prefill_tokens)
    assert prefills == [256, 256, 88]
    assert req.num_output == 1 and req.first_token_at is not None


def test_max_num_seqs_keeps_extra_requests_waiting():
    engine = EngineCore(TINY)  # max_num_seqs 4
    for i in range(6):
        engine.add_request(_req(f"r{i}", 20, max_tokens=8, start=1000 * i))
    engine.run_step(0.0)
    assert len(engine.running) == 4 and len(engine.waiting) == 2
    _drain(engine)
    assert engine.stats.finished == {"length": 6}
    assert engine.pool.usage() == 0.0


def test_kv_exhaustion_queues_or_preempts_without_deadlock():
    profile = dataclasses.replace(TINY, num_gpu_blocks=20, max_num_seqs=8)
    engine = EngineCore(profile)
    for i in range(5):
        engine.add_request(_req(f"r{i}", 100, max_tokens=40, start=1000 * i))
    engine.run_step(0.0)
    assert engine.waiting  # 5 x 7 blocks do not fit in 20
    _drain(engine)
    assert engine.stats.finished == {"length": 5}
    assert engine.stats.preemptions > 0  # decodes growing past the free blocks preempted the newest request


def test_max_loras_limits_adapters_in_batch():
    engine = EngineCore(TINY, max_loras=1)
    engine.add_request(_req("a", 20, max_tokens=5, lora="one"))
    engine.add_request(_req("b", 20, max_tokens=5, start=500, lora="two"))
    engine.add_request(_req("c", 20, max_tokens=5, start=900))
    step, _ = engine.run_step(0.0)
    assert step is not None and step.lora_loads == 1
    assert [r.request_id for r in engine.running] == ["a", "c"]  # "two" waits for the slot; base model runs
    assert engine.running_loras() == ["one"] and engine.waiting_loras() == ["two"]
    _drain(engine)
    assert engine.stats.finished == {"length": 3}


def test_loading_an_inactive_adapter_costs_its_load_delay_once():
    engine = EngineCore(TINY, max_loras=1)
    engine.add_request(_req("base", 8, max_tokens=3))
    base, _ = engine.run_step(0.0)
    engine.add_request(_req("a", 8, max_tokens=3, start=100, lora="one"))
    loaded, _ = engine.run_step(0.0)  # a's prefill (one adapter load) next to base's decode
    steady, _ = engine.run_step(0.0)  # both decode; "one" is already resident
    assert base is not None and loaded is not None and steady is not None
    assert (loaded.lora_loads, steady.lora_loads) == (1, 0)
    assert loaded.duration - loaded.prefill_tokens / TINY.prefill_tokens_per_s > base.duration
    assert loaded.duration > steady.duration + TINY.lora_load_s / 2


def test_sim_clock_runs_time_scale_times_faster_than_the_wall():
    wall = [100.0]
    clock = SimClock(10.0, wall=lambda: wall[0])
    assert clock.now() == 0.0
    wall[0] = 101.5
    assert clock.now() == 15.0  # simulated seconds: 1.5 wall seconds at x10
    assert clock.wall_delay(25.0) == 1.0  # 10 simulated seconds ahead = 1 wall second
    with pytest.raises(ValueError, match="positive"):
        SimClock(0.0)


def test_abort_frees_blocks():
    engine = EngineCore(TINY)
    req = _req("a", 100, max_tokens=50)
    engine.add_request(req)
    engine.run_step(0.0)
    assert engine.pool.usage() > 0
    engine.abort(req)
    assert engine.pool.usage() == 0.0 and not engine.has_work()


def test_decode_step_time_grows_with_batch():
    engine = EngineCore(TINY)
    engine.add_request(_req("a", 10, max_tokens=10))
    engine.run_step(0.0)
    single, _ = engine.run_step(0.0)
    for i in range(3):
        engine.add_request(_req(f"b{i}", 10, max_tokens=10, start=100 * (i + 1)))
    engine.run_step(0.0)
    batch, _ = engine.run_step(0.0)
    assert single is not None and batch is not None
    assert batch.num_decode == 4 and single.num_decode == 1
    assert batch.duration > single.duration


def test_tokenizer_is_deterministic_and_about_four_chars_per_token():
    text = (
        "The history of the Roman Empire spans many centuries, during which the civilization expanded "
        "across Europe, North Africa and the Middle East. Its administrative structures and engineering "
        "achievements influenced subsequent societies profoundly. "
    ) * 50
    a = Tokenizer().encode(text)
    assert a == Tokenizer().encode(text)
    assert 3.0 < len(text) / len(a) < 5.0
    # A shared prefix of text gives a shared prefix of tokens (prefix caching depends on it).
    assert Tokenizer().encode(text[:1000] + " extra question")[:100] == a[:100]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_are_consistent(name):
    p = PROFILES[name]
    assert p.kv_cache_tokens >= p.max_model_len  # any admitted prompt fits the cache
    assert p.max_num_batched_tokens >= p.block_size


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ValueError, match="tiny"):
        get_profile("nope")
