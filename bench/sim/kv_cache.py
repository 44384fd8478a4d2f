"""Paged KV cache with prefix caching, after vLLM V1's KVCacheManager / BlockPool.

Blocks hold `block_size` tokens. A FULL block of a prompt is identified by a chained hash: the hash of the
previous block, the block's token ids and an extra key (the LoRA adapter), so a block only matches when
everything before it matches too. Blocks freed by finished requests keep their hash and stay findable
(ref count 0) until the least-recently-freed one is evicted to make room.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict

import xxhash


def block_hashes(token_ids: list[int], block_size: int, extra_key: str = "") -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (the trailing partial block has none)."""
    hashes: list[int] = []
    parent = xxhash.xxh3_64_intdigest(extra_key.encode("utf-8"))
    ids = array("I", token_ids).tobytes()
    width = block_size * 4
    for start in range(0, (len(token_ids) // block_size) * width, width):
        parent = xxhash.xxh3_64_intdigest(ids[start : start + width], seed=parent)
        hashes.append(parent)
    return hashes


class BlockPool:
    """Fixed pool of KV blocks: reference counts, a hash -> block map and an LRU queue of free blocks."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}
        # Free blocks (ref 0) in eviction order: the first is evicted first.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.evictions = 0

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
                self.evictions += 1
            self._ref[block] = 1
            out.append(block)
        return out

    def cache_block(self, block: int, block_hash: int) -> None:
        """Make a just-filled block findable by its hash (a duplicate of a cached hash stays private)."""
        if self._hash[block] is None and block_hash not in self._cached:
            self._hash[block] = block_hash
            self._cached[block_hash] = block

    def release(self, blocks: list[int]) -> None:
        """Drop one reference from each block; tail blocks first so they are evicted before the prefix."""
        for b in reversed(blocks):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None

    def is_cached(self, block_hash: int) -> bool:
        """Whether a block with this hash is findable."""
        return block_hash in self._cached
