"""An in-process LRU bounded by bytes, each entry with its own expiry (the exact tier's front)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    size: int
    expires_at: float  # on the LRU's clock; inf: never


class ByteLRU(Generic[V]):
    """Least-recently-used eviction once the entries' sizes add up to more than `max_bytes`.

    Expired entries are dropped when they are looked up or reached while making room, never counted as
    evictions. `on_evict(key, size)` is told about each entry evicted to make room.
    """

    def __init__(
        self,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._clock = clock
        self._on_evict = on_evict
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def ttl(self, key: str) -> float | None:
        """Seconds until `key` expires (inf: never), or None when it is not here."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry.expires_at - self._clock()
        return left if left > 0 else None

    def put(self, key: str, value: V, size: int, ttl_s: float | None = None) -> bool:
        """Keep `value` (replacing any entry of `key`); False when it alone exceeds the LRU or ttl <= 0."""
        self._drop(key)
        if size > self.max_bytes or (ttl_s is not None and ttl_s <= 0):
            return False
        expires_at = self._clock() + ttl_s if ttl_s is not None else float("inf")
        self._make_room(size)
        self._entries[key] = _Entry(value, size, expires_at)
        self._bytes += size
        return True

    def delete(self, key: str) -> bool:
        return self._drop(key)

    def remove_where(self, match: Callable[[str], bool]) -> int:
        """Drop every entry whose key matches; returns how many."""
        keys = [k for k in self._entries if match(k)]
        for key in keys:
            self._drop(key)
        return len(keys)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _make_room(self, size: int) -> None:
        if self._bytes + size <= self.max_bytes:
            return
        now = self._clock()
        while self._bytes + size > self.max_bytes and self._entries:
            key, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            if entry.expires_at <= now:
                continue  # it was dead anyway: not an eviction
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(key, entry.size)

    def _drop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True
