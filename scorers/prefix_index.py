"""An approximate, per-pod index of which prompt prefixes each pod's KV cache likely holds.

Follows the Gateway API Inference Extension (GIE) prefix plugin: the prompt is cut into fixed-size character
blocks and each full block gets a chained xxhash64 (seeded by the target model), so a block's hash stands for
the whole prefix ending at it. Each pod has an LRU of the block hashes routed to it; a global
hash -> pods map makes a lookup cost O(blocks + matches) instead of O(blocks x pods).

Beyond GIE: an LRU can be sized from the pod's scraped KV capacity (`capacity_from_metrics`), `forget`
drops a pod's entries (the prefix-cache scorer calls it when the datastore reports a restart or removal),
`remove` takes back one request's blocks from a pod that never served it, and the request's cache_salt
seeds the hash chain.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence

import xxhash

from epp.datastore import MetricsSnapshot

DEFAULT_BLOCK_SIZE = 64
DEFAULT_MAX_BLOCKS = 256
DEFAULT_LRU_CAPACITY = 31_250
CHARS_PER_TOKEN = 4  # a usual average for English text with BPE tokenizers; GIE's 64-char block assumes it

_xxh64 = xxhash.xxh64_intdigest
_u64_le = struct.Struct("<Q").pack  # (cheaper than int.to_bytes per call, once per block of every prompt)


def block_hashes(
    prompt: str,
    model: str,
    block_size: int,
    max_blocks: int,
    salt: str | None = None,
    known: Sequence[int] = (),
) -> list[int]:
    """Chained hashes of the prompt's leading full blocks (at most `max_blocks`); a partial tail is ignored.

    hash(0) = xxh64(model); hash(i) = xxh64(utf8(block_i) + hash(i-1) as 8 little-endian bytes), as in GIE.
    With a `salt` (the request's cache_salt) hash(0) = xxh64(model + "\x00" + salt): vLLM shares no KV
    cache across salts, so neither may the index. Blocks are `block_size` characters (equal to GIE's bytes
    for ASCII prompts). `known`: the hashes of the prompt's first blocks, already computed for the same
    model, salt and block size (scorers/block_hash_memo.py); the chain goes on from its last.
    """
    n = min(len(prompt) // block_size, max_blocks)
    if n == 0:
        return []
    skip = min(len(known), n)
    if skip:
        prev = known[skip - 1]
    else:
        prev = _xxh64(model.encode() if salt is None else f"{model}\x00{salt}".encode())
    out = list(known)  # (one copy: `known[:skip]` would be a second)
    del out[skip:]
    append = out.append
    first, end = skip * block_size, n * block_size
    if prompt.isascii():
        data = prompt[first:end].encode("ascii")
        for start in range(0, end - first, block_size):
            prev = _xxh64(data[start : start + block_size] + _u64_le(prev))
            append(prev)
    else:
        for start in range(first, end, block_size):
            block = prompt[start : start + block_size].encode()
            prev = _xxh64(block + _u64_le(prev))
            append(prev)
    return out


def capacity_from_metrics(
    metrics: MetricsSnapshot, block_size_chars: int, chars_per_token: float = CHARS_PER_TOKEN
) -> int | None:
    """How many index blocks a pod's KV cache holds, from its scraped capacity; None when unknown."""
    tokens = metrics.kv_capacity_tokens
    if tokens is None:
        return None
    return max(1, int(tokens * chars_per_token // block_size_chars))


class PrefixIndex:
    """Per-pod LRUs of block hashes plus a global hash -> pods map, kept consistent. Not thread-safe.

    The global map stores, per hash, a bitmask of the pods holding it (each pod owns one bit while it has an
    LRU). Matching many pods against a shared prefix is then one integer AND per block.
    """

    def __init__(self, default_capacity: int = DEFAULT_LRU_CAPACITY) -> None:
        if default_capacity < 1:
            raise ValueError(f"default_capacity must be positive, got {default_capacity}")
        self.default_capacity = default_capacity
        self._lrus: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        self._holders: dict[int, int] = {}  # block hash -> bitmask of pods
        self._bit: dict[str, int] = {}  # pod -> its bit's position
        self._pod_at: list[str | None] = []  # bit position -> pod
        self._free_bits: list[int] = []

    # -- queries ----------------------------------------------------------
    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Pod -> leading blocks it holds (up to its first miss), for every pod holding the first block."""
        if not hashes:
            return {}
        holders = self._holders
        alive = holders.get(hashes[0], 0)
        if not alive:
            return {}
        counts: dict[str, int] = {}
        depth = 1
        for i in range(1, len(hashes)):
            nxt = alive & holders.get(hashes[i], 0)
            if nxt != alive:
                self._assign(alive & ~nxt, depth, counts)
                if not nxt:
                    return counts
                alive = nxt
            depth += 1
        self._assign(alive, depth, counts)
        return counts

    def pods(self) -> list[str]:
        return list(self._lrus)

    def size(self, pod: str) -> int:
        lru = self._lrus.get(pod)
        return 0 if lru is None else len(lru)

    def capacity(self, pod: str) -> int:
        return self._capacity.get(pod, self.default_capacity)

    def entries(self, pod: str) -> list[int]:
        """The pod's hashes from least to most recently used (for inspection and tests)."""
        return list(self._lrus.get(pod, ()))

    def holds(self, pod: str, block_hash: int) -> bool:
        bit = self._bit.get(pod)
        return bit is not None and bool(self._holders.get(block_hash, 0) >> bit & 1)

    # -- updates ----------------------------------------------------------
    def insert(self, pod: str, hashes: Sequence[int]) -> list[int]:
        """Record that `pod` now caches these blocks, refreshing their recency; returns the hashes the pod
        did not hold before (and still holds), so a caller can `remove` exactly those again.

        Inserted last block first, so the leading blocks end up most recent: when the LRU overflows, the
        tail of a prompt goes before its prefix (the order vLLM frees blocks in) and what survives is a
        prefix that still matches.
        """
        lru = self._lrus.get(pod)
        if lru is None:
            lru = self._lrus[pod] = OrderedDict()
            self._take_bit(pod)
        mask = 1 << self._bit[pod]
        holders = self._holders
        added: list[int] = []
        # Bound methods hoisted: this loop runs once per prompt block on every request.
        refresh, held_by, add = lru.move_to_end, holders.get, added.append
        for h in reversed(hashes):
            if h in lru:
                refresh(h)
            else:
                lru[h] = None
                holders[h] = held_by(h, 0) | mask
                add(h)
        capacity = self.capacity(pod)
        if len(lru) > capacity:
            self._evict(lru, mask, capacity)
            if capacity < len(hashes):  # (else this request's blocks are the most recent and all stayed)
                added = [h for h in added if h in lru]
        return added

    def remove(self, pod: str, hashes: Sequence[int]) -> None:
        """Drop these hashes from the pod's LRU (those it does not hold are ignored)."""
        lru = self._lrus.get(pod)
        if lru is None:
            return
        mask = 1 << self._bit[pod]
        for h in hashes:
            if h in lru:
                del lru[h]
                self._drop_holder(h, mask)

    def set_capacity(self, pod: str, capacity: int | None) -> None:
        """Size the pod's LRU (None: back to the default); shrinking evicts the least recently used."""
        if capacity is None:
            self._capacity.pop(pod, None)
        elif capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        else:
            self._capacity[pod] = capacity
        lru = self._lrus.get(pod)
        if lru is not None:
            self._evict(lru, 1 << self._bit[pod], self.capacity(pod))

    def forget(self, pod: str) -> None:
        """Drop everything known about the pod (it restarted with an empty cache, or left)."""
        self._capacity.pop(pod, None)
        lru = self._lrus.pop(pod, None)
        if lru is None:
            return
        bit = self._bit.pop(pod)
        mask = 1 << bit
        for h in lru:
            self._drop_holder(h, mask)
        self._pod_at[bit] = None
        self._free_bits.append(bit)

    # -- internals --------------------------------------------------------
    def _take_bit(self, pod: str) -> None:
        if self._free_bits:
            bit = self._free_bits.pop()
            self._pod_at[bit] = pod
        else:
            bit = len(self._pod_at)
            self._pod_at.append(pod)
        self._bit[pod] = bit

    def _assign(self, mask: int, depth: int, counts: dict[str, int]) -> None:
        """counts[pod] = depth for every pod whose bit is set in mask."""
        pod_at = self._pod_at
        if mask.bit_count() > 8:
            # Many pods (a prefix they all share ended): scanning the binary string beats big-int bit tricks.
            for bit, digit in enumerate(bin(mask)[:1:-1]):
                if digit == "1":
                    pod = pod_at[bit]
                    if pod is not None:
                        counts[pod] = depth
            return
        while mask:
            low = mask & -mask
            pod = pod_at[low.bit_length() - 1]
            if pod is not None:
                counts[pod] = depth
            mask ^= low

    def _evict(self, lru: OrderedDict[int, None], mask: int, capacity: int) -> None:
        """Trim the LRU to `capacity`."""
        for _ in range(len(lru) - capacity):
            self._drop_holder(lru.popitem(last=False)[0], mask)

    def _drop_holder(self, h: int, mask: int) -> None:
        left = self._holders.get(h, 0) & ~mask
        if left:
            self._holders[h] = left
        else:
            self._holders.pop(h, None)
