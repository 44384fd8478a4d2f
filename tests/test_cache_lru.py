"""epp.cache.lru: bounded by bytes, least recently used out first, per-entry expiry on an injected clock."""

from __future__ import annotations

import pytest

from epp.cache.lru import ByteLRU


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_evicts_least_recently_used_by_bytes() -> None:
    evicted: list[tuple[str, int]] = []
    lru: ByteLRU[str] = ByteLRU(100, on_evict=lambda k, size: evicted.append((k, size)))
    assert lru.put("a", "A", 40) and lru.put("b", "B", 40)
    assert lru.get("a") == "A"  # a is now the most recent
    assert lru.put("c", "C", 40)
    assert evicted == [("b", 40)] and lru.evictions == 1
    assert lru.get("b") is None and lru.get("a") == "A" and lru.get("c") == "C"
    assert lru.bytes == 80 and len(lru) == 2
    assert lru.put("big", "X", 100)  # fits exactly: everything else goes
    assert len(lru) == 1 and lru.bytes == 100 and lru.evictions == 3


def test_too_large_or_dead_on_arrival_is_not_kept() -> None:
    lru: ByteLRU[str] = ByteLRU(10)
    assert not lru.put("a", "A", 11)
    assert not lru.put("b", "B", 1, ttl_s=0)
    assert len(lru) == 0 and lru.bytes == 0
    with pytest.raises(ValueError):
        ByteLRU(-1)


def test_replacing_an_entry_keeps_the_byte_count_right() -> None:
    lru: ByteLRU[str] = ByteLRU(100)
    lru.put("a", "A", 30)
    lru.put("a", "A2", 50)
    assert lru.bytes == 50 and lru.get("a") == "A2"
    assert lru.delete("a") and not lru.delete("a") and lru.bytes == 0


def test_entries_expire_and_expired_ones_are_not_evictions() -> None:
    clock = Clock()
    lru: ByteLRU[str] = ByteLRU(100, clock=clock)
    lru.put("short", "S", 50, ttl_s=1)
    lru.put("long", "L", 40, ttl_s=10)
    lru.put("forever", "F", 10)
    assert lru.ttl("short") == 1 and lru.ttl("forever") == float("inf")
    clock.now = 1.0
    assert lru.get("short") is None and lru.ttl("short") is None and lru.bytes == 50
    lru.put("short2", "S", 10, ttl_s=1)
    assert lru.get("long") == "L" and lru.get("forever") == "F"  # short2 is now the least recent
    clock.now = 5.0
    assert lru.put("new", "N", 50)  # the dead short2 makes room, and that is no eviction
    assert lru.evictions == 0 and lru.get("long") == "L" and lru.get("forever") == "F"
    clock.now = 20.0
    assert lru.get("long") is None and lru.get("forever") == "F"


def test_remove_where_and_clear() -> None:
    lru: ByteLRU[int] = ByteLRU(1000)
    for i in range(10):
        lru.put(f"{'x' if i % 2 else 'y'}:{i}", i, 10)
    assert lru.remove_where(lambda k: k.startswith("x:")) == 5
    assert len(lru) == 5 and lru.bytes == 50 and "y:0" in lru
    lru.clear()
    assert len(lru) == 0 and lru.bytes == 0
