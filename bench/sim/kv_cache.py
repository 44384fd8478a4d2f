"""Paged KV cache with prefix caching, after vLLM V1's KVCacheManager / BlockPool.

Blocks hold `block_size` tokens. A FULL block of a prompt is identified by a chained hash: the hash of the
previous block, the block's token ids and an extra key (the LoRA adapter), so a block only matches when
everything before it matches too. Blocks freed by finished requests keep their hash and stay findable
(ref count 0) until the least-recently-freed one is evicted to make room.

The pool records what vLLM would publish as KV events (`--kv-events-config`): a block stored when it becomes
findable, removed when evicted, all cleared on a prefix-cache reset. `drain_events()` hands them over.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass

import xxhash

DEFAULT_BLOCK_SIZE = 16  # vLLM's GPU default; the CPU build uses 128


def extend_block_hashes(
    hashes: list[int], token_ids: list[int], block_size: int, extra_key: str = ""
) -> None:
    """Append to `hashes` the chained hashes of the full blocks of `token_ids` it does not have yet."""
    parent = hashes[-1] if hashes else xxhash.xxh3_64_intdigest(extra_key.encode("utf-8"))
    first = len(hashes) * block_size
    # "Q": token ids are 64-bit so ids >= 2**32 hash (and never crash); any fixed width gives a valid chain.
    ids = array("Q", token_ids[first : (len(token_ids) // block_size) * block_size]).tobytes()
    width = block_size * 8
    for start in range(0, len(ids), width):
        parent = xxhash.xxh3_64_intdigest(ids[start : start + width], seed=parent)
        hashes.append(parent)


def hash_extra_key(lora: str | None, cache_salt: str | None = None) -> str:
    """The extra key seeding a prompt's first block hash: the adapter and, like vLLM, the cache_salt."""
    return lora or "" if cache_salt is None else f"{lora or ''}\x00salt\x00{cache_salt}"


def block_hashes(token_ids: list[int], block_size: int, extra_key: str = "") -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (the trailing partial block has none)."""
    hashes: list[int] = []
    extend_block_hashes(hashes, token_ids, block_size, extra_key)
    return hashes


@dataclass(frozen=True)
class Stored:
    """A block became findable: its hash, its parent's (None for a first block) and its token ids."""

    block_hash: int
    parent_hash: int | None
    token_ids: tuple[int, ...]
    lora: str | None = None
    cache_salt: str | None = (
        None  # only on a prompt's first block, as vLLM puts it in that block's extra keys
    )


@dataclass(frozen=True)
class Removed:
    """A cached block was evicted."""

    block_hash: int


@dataclass(frozen=True)
class Cleared:
    """The prefix cache was reset."""


CacheEvent = Stored | Removed | Cleared


class BlockPool:
    """Fixed pool of KV blocks: reference counts, a hash -> block map and an LRU queue of free blocks."""

    def __init__(
        self, num_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE, record_events: bool = False
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._record = record_events
        self._events: list[CacheEvent] = []
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}
        # Free blocks (ref 0) in eviction order: the first is evicted first.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.evictions = 0

    @property
    def records(self) -> bool:
        """Whether KV events are recorded."""
        return self._record

    @property
    def num_free(self) -> int:
        """Blocks with no running request (cached or empty)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks that hold a findable full-block hash."""
        return len(self._cached)

    def usage(self) -> float:
        """Fraction of blocks referenced by running requests (vLLM's kv_cache_usage_perc)."""
        return 1.0 - len(self._free) / self.num_blocks

    def lookup(self, hashes: list[int], max_blocks: int) -> list[int]:
        """Blocks of the longest cached run of leading `hashes`, at most `max_blocks` of them."""
        hits: list[int] = []
        for h in hashes[:max_blocks]:
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def free_after_touch(self, blocks: list[int]) -> int:
        """Free blocks left if `blocks` were referenced (those currently free would stop being free)."""
        return len(self._free) - sum(1 for b in blocks if self._ref[b] == 0)

    def touch(self, blocks: list[int]) -> None:
        """Reference cached blocks a request reuses."""
        for b in blocks:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1

    def allocate(self, count: int) -> list[int]:
        """Take `count` free blocks, evicting the least recently freed cached ones. Caller checks room."""
        if count > len(self._free):
            raise RuntimeError(f"KV cache has {len(self._free)} free blocks, {count} requested")
        out: list[int] = []
        for _ in range(count):
            block, _none = self._free.popitem(last=False)
            old = self._hash[block]
            if old is not None:
                self._hash[block] = None
                if self._cached.get(old) == block:
                    del self._cached[old]
                    if self._record:
                        self._events.append(Removed(old))
                self.evictions += 1
            self._ref[block] = 1
            out.append(block)
        return out

    def cache_block(
        self,
        block: int,
        block_hash: int,
        parent_hash: int | None = None,
        token_ids: tuple[int, ...] = (),
        lora: str | None = None,
        cache_salt: str | None = None,
    ) -> None:
        """Make a just-filled block findable by its hash (a duplicate of a cached hash stays private)."""
        if self._hash[block] is None and block_hash not in self._cached:
            self._hash[block] = block_hash
            self._cached[block_hash] = block
            if self._record:
                self._events.append(Stored(block_hash, parent_hash, token_ids, lora, cache_salt))

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash (vLLM's /reset_prefix_cache); False while any block is in use."""
        if len(self._free) != self.num_blocks:
            return False
        self._hash = [None] * self.num_blocks
        self._cached.clear()
        if self._record:
            self._events.append(Cleared())
        return True

    def drain_events(self) -> list[CacheEvent]:
        """KV events recorded since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def cached_hashes(self) -> set[int]:
        """Hashes of every findable block."""
        return set(self._cached)

    def release(self, blocks: list[int]) -> None:
        """Drop one reference from each block; tail blocks first so they are evicted before the prefix."""
        for b in reversed(blocks):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None

    def is_cached(self, block_hash: int) -> bool:
        """Whether a block with this hash is findable."""
        return block_hash in self._cached
