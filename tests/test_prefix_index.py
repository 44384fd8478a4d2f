"""Unit tests of the prefix block hashing and the per-pod LRU index."""

from __future__ import annotations

import xxhash

from epp.datastore import MetricsSnapshot
from scorers.prefix_index import PrefixIndex, block_hashes, capacity_from_metrics

MODEL = "llama"


def text(n_blocks: int, seed: str = "x", block: int = 64) -> str:
    """n_blocks distinct 64-char blocks."""
    return "".join(f"{seed}{i:06d}".ljust(block, "-") for i in range(n_blocks))


def test_hash_matches_gie_definition() -> None:
    prompt = "a" * 64 + "b" * 64 + "tail"
    seed = xxhash.xxh64_intdigest(MODEL.encode())
    h1 = xxhash.xxh64_intdigest(b"a" * 64 + seed.to_bytes(8, "little"))
    h2 = xxhash.xxh64_intdigest(b"b" * 64 + h1.to_bytes(8, "little"))
    assert block_hashes(prompt, MODEL, 64, 256) == [h1, h2]


def test_chain_same_block_at_different_positions_hashes_differently() -> None:
    hashes = block_hashes("z" * 64 * 3, MODEL, 64, 256)
    assert len(set(hashes)) == 3


def test_different_model_does_not_match() -> None:
    prompt = text(4)
    index = PrefixIndex()
    index.insert("a", block_hashes(prompt, MODEL, 64, 256))
    assert index.match(block_hashes(prompt, "llama-lora-sql", 64, 256)) == {}
    assert index.match(block_hashes(prompt, MODEL, 64, 256)) == {"a": 4}


def test_partial_last_block_ignored_and_short_prompt_has_no_blocks() -> None:
    assert block_hashes("q" * 63, MODEL, 64, 256) == []
    full = block_hashes("q" * 128, MODEL, 64, 256)
    assert block_hashes("q" * 128 + "r" * 63, MODEL, 64, 256) == full
    assert len(full) == 2


def test_block_cap_counts_from_start() -> None:
    long = block_hashes(text(300), MODEL, 64, 256)
    assert len(long) == 256
    assert long == block_hashes(text(256), MODEL, 64, 256)
    assert block_hashes(text(10), MODEL, 64, 4) == block_hashes(text(4), MODEL, 64, 256)


def test_blocks_are_characters_hashed_as_utf8() -> None:
    prompt = "é" * 64 * 2
    seed = xxhash.xxh64_intdigest(MODEL.encode())
    h1 = xxhash.xxh64_intdigest(("é" * 64).encode() + seed.to_bytes(8, "little"))
    assert block_hashes(prompt, MODEL, 64, 256)[0] == h1
    assert len(block_hashes(prompt, MODEL, 64, 256)) == 2


def test_match_stops_at_each_pods_first_miss() -> None:
    index = PrefixIndex()
    p = block_hashes(text(6), MODEL, 64, 256)
    index.insert("a", p)
    index.insert("b", p[:2])
    index.insert("c", p[1:])  # holds later blocks but not the first: no prefix
    assert index.match(p) == {"a": 6, "b": 2}
    other = block_hashes(text(6, seed="y"), MODEL, 64, 256)
    assert index.match(other) == {}


def test_lru_evicts_least_recent_and_respects_capacity() -> None:
    index = PrefixIndex(default_capacity=4)
    index.insert("a", [1, 2])
    index.insert("a", [3, 4])
    index.insert("a", [1])  # refresh 1
    index.insert("a", [5])
    # insertion runs last block first, so after [1,2] then [3,4]: order 2,1,4,3; refresh 1 -> 2,4,3,1
    assert index.entries("a") == [4, 3, 1, 5]
    assert index.size("a") == 4
    assert not index.holds("a", 2)
    assert index.match([2]) == {}


def test_overflowing_prompt_keeps_its_leading_blocks() -> None:
    index = PrefixIndex(default_capacity=3)
    p = block_hashes(text(5), MODEL, 64, 256)
    index.insert("a", p)
    assert index.match(p) == {"a": 3}


def test_eviction_keeps_global_map_consistent() -> None:
    index = PrefixIndex(default_capacity=2)
    index.insert("a", [1, 2])
    index.insert("b", [1, 2])
    index.insert("a", [3, 4])
    assert index.match([1, 2]) == {"b": 2}
    index.forget("b")
    assert index.match([1, 2]) == {}
    assert index.match([4, 3]) == {"a": 2}
    assert index._holders.keys() == {3, 4}


def test_resize_shrinks_oldest_first_and_none_restores_default() -> None:
    index = PrefixIndex(default_capacity=10)
    index.insert("a", [1])
    index.insert("a", [2])
    index.insert("a", [3])
    index.set_capacity("a", 2)
    assert index.entries("a") == [2, 3]
    assert index.capacity("a") == 2
    index.set_capacity("a", None)
    assert index.capacity("a") == 10


def test_capacity_from_metrics() -> None:
    m = MetricsSnapshot(waiting=0, running=0, kv_cache_usage=0.0, block_size=16, num_gpu_blocks=1000)
    # 16,000 tokens x 4 chars / 64 chars per block
    assert capacity_from_metrics(m, 64) == 1000
    assert capacity_from_metrics(m, 128) == 500
    unknown = MetricsSnapshot(waiting=0, running=0, kv_cache_usage=0.0)
    assert capacity_from_metrics(unknown, 64) is None


def test_match_many_pods_dropping_out_at_different_depths_and_bit_reuse() -> None:
    index = PrefixIndex()
    p = block_hashes(text(40), MODEL, 64, 256)
    pods = [f"pod-{i}" for i in range(30)]
    for i, pod in enumerate(pods):
        index.insert(pod, p[: 1 + i % 3 if i < 20 else 40])  # 20 pods drop out early (dense), 10 match all
    expected = {pod: (1 + i % 3 if i < 20 else 40) for i, pod in enumerate(pods)}
    assert index.match(p) == expected

    index.forget("pod-25")
    index.insert("newcomer", p[:7])  # takes the freed slot; must not inherit pod-25's blocks
    del expected["pod-25"]
    expected["newcomer"] = 7
    assert index.match(p) == expected
    assert not index.holds("newcomer", p[7])


def test_salt_seeds_the_chain() -> None:
    prompt = text(3)
    unsalted = block_hashes(prompt, MODEL, 64, 256)
    assert block_hashes(prompt, MODEL, 64, 256, salt=None) == unsalted  # GIE-compatible without a salt
    one = block_hashes(prompt, MODEL, 64, 256, salt="s1")
    assert one == block_hashes(prompt, MODEL, 64, 256, salt="s1")
    two = block_hashes(prompt, MODEL, 64, 256, salt="s2")
    assert not set(one) & set(two) and not set(one) & set(unsalted)
    seed = xxhash.xxh64_intdigest(f"{MODEL}\x00s1".encode())
    assert one[0] == xxhash.xxh64_intdigest(prompt[:64].encode() + seed.to_bytes(8, "little"))


def test_insert_returns_new_hashes_and_remove_takes_exactly_those_back() -> None:
    index = PrefixIndex()
    assert index.insert("a", [1, 2]) == [2, 1]  # inserted last block first
    added = index.insert("a", [1, 2, 3, 4])
    assert sorted(added) == [3, 4]
    index.insert("b", [3])
    index.remove("a", added)
    assert index.entries("a") == [2, 1]
    assert index.match([1, 2, 3]) == {"a": 2}
    assert index.holds("b", 3) and index._holders[3] == 1 << index._bit["b"]  # b keeps its copy
    index.remove("a", [99])  # not held: ignored
    index.remove("nobody", [1])
    assert index.entries("a") == [2, 1]


def test_insert_does_not_report_hashes_evicted_at_once() -> None:
    index = PrefixIndex(default_capacity=2)
    added = index.insert("a", [1, 2, 3])  # 3 goes in first and falls out when 1 arrives
    assert sorted(added) == [1, 2]
    assert sorted(index.entries("a")) == [1, 2]
