"""Which prompt blocks each pod really holds, rebuilt from its KV events, keyed so a request can be matched.

Keys. The engine's block hashes are opaque (seeded per process, a choice of hash function per release), so the
index computes its own key for every stored block from what the event carries: the block's token ids, chained
on its parent's key (`xxh3_64(token ids as uint64, seed=parent key)`), the first block seeded from the LoRA
adapter name and the request's `cache_salt` (vLLM folds both into its first block's hash: no two adapters or
salts share a block). `block_keys` computes the same keys from a request's token ids, so the picker never
needs the engine's hash function.

Removals name only engine hashes, so each pod keeps engine hash -> key, per data-parallel rank (ranks hash
independently) and per KV-cache group. A key held by several (rank, group) entries counts once and leaves
only when its last entry is removed. A stored block whose parent this index never saw (its message was lost)
cannot be keyed and is skipped: the pod gets less credit, never more.

Memory is bounded per pod (`max_blocks_per_pod` entries, about 150 bytes each; docs/precise-prefix.md): past
it the oldest sixteenth of the entries is dropped, which again only under-credits the pod (the bound is meant
to sit above the pod's real block count). Speculative keys (a pick's blocks credited before the pod's events
confirm them) expire after their TTL and are bounded too.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice, takewhile

import xxhash

from epp.kv_events.wire import AllBlocksCleared, BlockRemoved, BlockStored, EventMessage

DEFAULT_MAX_BLOCKS_PER_POD = 1 << 20  # 1,048,576: above any single GPU's block count at block size 16
DEFAULT_MAX_SPECULATIVE_PER_POD = 1 << 16
REMOVED_KEPT_PER_RANK = 4_096  # keys of removed entries kept to key late children of evicted parents
KEY_SEED = 0x9E3779B97F4A7C15  # any fixed seed: keys must only agree between the index and block_keys
GPU_MEDIA = (None, "GPU")  # blocks offloaded elsewhere (CPU, disk) are not prefix-cache hits
_GROUP_SHIFT = 64  # entry id = engine hash | group << 64: one int, no tuple per entry


def first_parent(lora: str | None, cache_salt: str | None) -> int:
    """The seed of a prompt's first block key: adapter and salt, so neither shares blocks with another."""
    return xxhash.xxh3_64_intdigest(f"{lora or ''}\x00{cache_salt or ''}".encode(), seed=KEY_SEED)


def chain_key(parent: int, tokens: Sequence[int]) -> int:
    """The key of a block with these token ids after a block keyed `parent`."""
    return xxhash.xxh3_64_intdigest(array("Q", tokens).tobytes(), seed=parent)


def block_keys(
    token_ids: Sequence[int],
    block_size: int,
    lora: str | None = None,
    cache_salt: str | None = None,
    max_blocks: int | None = None,
) -> list[int]:
    """Chained keys of the full blocks of `token_ids` (a trailing partial block has none; vLLM caches none).

    Token ids outside 0..2**64-1 give no keys (no pod can have cached such a prompt).
    """
    full = len(token_ids) // block_size
    if max_blocks is not None:
        full = min(full, max_blocks)
    try:
        ids = array("Q", token_ids[: full * block_size]).tobytes()
    except (OverflowError, TypeError):
        return []
    width = block_size * 8
    parent = first_parent(lora, cache_salt)
    keys: list[int] = []
    digest = xxhash.xxh3_64_intdigest
    for start in range(0, len(ids), width):
        parent = digest(ids[start : start + width], seed=parent)
        keys.append(parent)
    return keys


def salt_of(event: BlockStored) -> str | None:
    """The `cache_salt` vLLM put in a prompt's first block's extra keys (after the adapter name, if any)."""
    extra = event.extra_keys
    if not extra or not extra[0]:
        return None
    items = [k for k in extra[0] if isinstance(k, str)]
    if items and event.lora_name is not None and items[0] == event.lora_name:
        items = items[1:]
    return items[-1] if items else None


@dataclass(slots=True)
class _Rank:
    """One data-parallel rank's entries: entry id (engine hash | group) -> key, oldest first.

    `copies` counts further stores of a held entry (vLLM caches a duplicate block under the same hash and
    removes each copy with its own event). `removed` remembers the keys of recently removed entries, so a
    block stored after its parent was evicted (a request still holding a private copy of the parent) still
    gets its key.
    """

    entries: dict[int, int] = field(default_factory=dict)  # insertion-ordered; a plain dict is half the size
    copies: dict[int, int] = field(default_factory=dict)
    removed: OrderedDict[int, int] = field(default_factory=OrderedDict)


@dataclass(slots=True)
class _PodView:
    """One pod: its ranks' entries, key reference counts (over ranks and groups), speculative keys."""

    synced: bool = False
    block_size: int | None = None
    ranks: dict[int, _Rank] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)
    entries: int = 0
    speculative: OrderedDict[int, float] = field(default_factory=OrderedDict)


@dataclass(slots=True)
class IndexStats:
    """Counters of events the index could not use (each under-credits a pod; none over-credits one)."""

    orphans: int = 0  # stored blocks whose parent was unknown
    malformed: int = 0  # stored events whose token ids do not fill their blocks
    dropped: int = 0  # entries dropped by the per-pod bound
    other_media: int = 0  # events about blocks outside GPU memory


class PreciseIndex:
    """Every pod's cached blocks under request-computable keys; a `KVEventSink` (epp.kv_events.sink)."""

    def __init__(
        self,
        max_blocks_per_pod: int = DEFAULT_MAX_BLOCKS_PER_POD,
        max_speculative_per_pod: int = DEFAULT_MAX_SPECULATIVE_PER_POD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_blocks_per_pod < 1 or max_speculative_per_pod < 0:
            raise ValueError("max_blocks_per_pod must be >= 1 and max_speculative_per_pod >= 0")
        self.max_blocks_per_pod = max_blocks_per_pod
        self.max_speculative_per_pod = max_speculative_per_pod
        self._clock = clock
        self._pods: dict[str, _PodView] = {}
        self.stats = IndexStats()

    # -- KVEventSink ------------------------------------------------------------------------------------
    def apply(self, pod: str, message: EventMessage) -> None:
        view = self._pods.get(pod)
        if view is None:
            view = self._pods[pod] = _PodView()
        rank_id = message.data_parallel_rank or 0
        rank = view.ranks.get(rank_id)
        if rank is None:
            rank = view.ranks[rank_id] = _Rank()
        for event in message.events:
            if isinstance(event, BlockStored):
                self._stored(view, rank, event)
            elif isinstance(event, BlockRemoved):
                if event.medium not in GPU_MEDIA:
                    self.stats.other_media += 1
                    continue
                group = (event.group_idx or 0) << _GROUP_SHIFT
                for engine_hash in event.block_hashes:
                    self._removed(view, rank, engine_hash | group)
            elif isinstance(event, AllBlocksCleared):
                for key in rank.entries.values():
                    self._unref(view, key)
                rank = view.ranks[rank_id] = _Rank()  # later events of this message go to the new one
                view.speculative.clear()

    def reset(self, pod: str, *, synced: bool) -> None:
        old = self._pods.get(pod)
        view = self._pods[pod] = _PodView(synced=synced)
        if old is not None:
            view.block_size = old.block_size

    def mark_synced(self, pod: str) -> None:
        view = self._pods.get(pod)
        if view is None:
            view = self._pods[pod] = _PodView()
        view.synced = True

    def is_synced(self, pod: str) -> bool:
        view = self._pods.get(pod)
        return view is not None and view.synced

    # -- reading ----------------------------------------------------------------------------------------
    def block_size(self, pod: str) -> int | None:
        """The pod's block size as its events last said; None before its first stored block."""
        view = self._pods.get(pod)
        return None if view is None else view.block_size

    def match(self, keys: Sequence[int], pods: Iterable[str]) -> dict[str, int]:
        """Per pod: how many leading `keys` it holds (cached, or speculatively credited and not expired)."""
        out: dict[str, int] = {}
        now: float | None = None
        total = len(keys)
        for pod in pods:
            view = self._pods.get(pod)
            if view is None:
                out[pod] = 0
                continue
            refs, spec = view.refs, view.speculative
            # The cached run at C speed (takewhile + list), then speculative keys one by one.
            n = len(list(takewhile(refs.__contains__, keys)))
            if n < total and spec:
                if now is None:
                    now = self._clock()
                for key in keys[n:]:
                    if key in refs or spec.get(key, 0.0) > now:
                        n += 1
                    else:
                        break
            out[pod] = n
        return out

    def keys(self, pod: str) -> set[int]:
        """Keys of every block the pod's events say it holds (speculative ones excluded)."""
        view = self._pods.get(pod)
        return set() if view is None else set(view.refs)

    def entries(self, pod: str) -> int:
        """(rank, group, engine hash) entries held for the pod: what the bound counts."""
        view = self._pods.get(pod)
        return 0 if view is None else view.entries

    def pods(self) -> list[str]:
        return list(self._pods)

    # -- writing outside events -------------------------------------------------------------------------
    def speculate(self, pod: str, keys: Sequence[int], ttl_s: float) -> None:
        """Credit `pod` with `keys` for `ttl_s` seconds (a pick's blocks its events have not confirmed)."""
        if self.max_speculative_per_pod == 0 or ttl_s <= 0:
            return
        view = self._pods.get(pod)
        if view is None:
            view = self._pods[pod] = _PodView()
        now = self._clock()
        spec = view.speculative
        while spec:  # expired ones first (oldest first: TTLs are mostly equal)
            oldest = next(iter(spec.items()))
            if oldest[1] > now:
                break
            spec.popitem(last=False)
        until = now + ttl_s
        for key in keys:
            if key not in view.refs:
                spec[key] = until
                spec.move_to_end(key)
        while len(spec) > self.max_speculative_per_pod:
            spec.popitem(last=False)

    def unspeculate(self, pod: str, keys: Sequence[int]) -> None:
        """Take back speculative credit (the pod never got the request)."""
        view = self._pods.get(pod)
        if view is not None:
            for key in keys:
                view.speculative.pop(key, None)

    def forget(self, pod: str) -> None:
        """Drop a pod that left the pool."""
        self._pods.pop(pod, None)

    # -- internals --------------------------------------------------------------------------------------
    def _removed(self, view: _PodView, rank: _Rank, entry: int) -> None:
        copies = rank.copies.get(entry)
        if copies:
            rank.copies[entry] = copies - 1
            return
        key = rank.entries.pop(entry, None)
        if key is None:
            return
        rank.copies.pop(entry, None)
        self._unref(view, key)
        rank.removed[entry] = key
        if len(rank.removed) > REMOVED_KEPT_PER_RANK:
            rank.removed.popitem(last=False)

    def _stored(self, view: _PodView, rank: _Rank, event: BlockStored) -> None:
        if event.medium not in GPU_MEDIA:
            self.stats.other_media += 1
            return
        size = event.block_size
        if len(event.token_ids) != size * len(event.block_hashes):
            self.stats.malformed += 1
            return
        if event.lora_name is None and event.lora_id is not None:
            self.stats.malformed += 1  # an adapter without its name: no key the picker could compute
            return
        view.block_size = size
        group = (event.group_idx or 0) << _GROUP_SHIFT
        entries = rank.entries
        if event.parent_block_hash is None:
            parent: int | None = first_parent(event.lora_name, salt_of(event))
        else:
            parent_entry = event.parent_block_hash | group
            parent = entries.get(parent_entry)
            if parent is None:
                parent = rank.removed.get(parent_entry)
        if parent is None:
            self.stats.orphans += len(event.block_hashes)
            return
        tokens = event.token_ids
        refs = view.refs
        for i, engine_hash in enumerate(event.block_hashes):
            parent = chain_key(parent, tokens[i * size : (i + 1) * size])
            entry = engine_hash | group
            old = entries.get(entry)
            if old == parent:
                rank.copies[entry] = rank.copies.get(entry, 0) + 1
                continue
            if old is not None:
                self._unref(view, old)
                rank.copies.pop(entry, None)
            entries[entry] = parent
            refs[parent] = refs.get(parent, 0) + 1
            view.entries += 1
            view.speculative.pop(parent, None)  # confirmed
        if view.entries > self.max_blocks_per_pod:
            self._shed(view, rank)

    def _shed(self, view: _PodView, rank: _Rank) -> None:
        """Over the bound: drop the oldest sixteenth at once (one scan of the head, not one per entry)."""
        while view.entries > self.max_blocks_per_pod:
            victim = rank if rank.entries else next(r for r in view.ranks.values() if r.entries)
            excess = view.entries - self.max_blocks_per_pod
            count = min(len(victim.entries), max(excess, self.max_blocks_per_pod // 16))
            for entry in list(islice(victim.entries, count)):
                self._unref(view, victim.entries.pop(entry))
                victim.copies.pop(entry, None)
            self.stats.dropped += count

    @staticmethod
    def _unref(view: _PodView, key: int) -> None:
        view.entries -= 1
        count = view.refs[key] - 1
        if count:
            view.refs[key] = count
        else:
            del view.refs[key]
