"""Vector indexes of the semantic tier: one per partition, and a registry with global and per-partition caps.

Vectors are unit rows, so cosine similarity is the inner product. Most partitions are tiny (a conversation
context rarely repeats many times), so a partition starts as a brute-force numpy matrix, exact and cheap to
delete from; from `hnsw_from` entries on it becomes an hnswlib HNSW graph (M=16, ef_construction=100,
ef=64), which finds a stored near-duplicate (cosine >= 0.8) among 100k entries in ~0.5 ms p95 on one core
(measured against usearch, whose int8 index searches ~25% faster but builds no faster; docs/cache.md).
Not thread-safe: the owner calls it from one thread. The conversion to HNSW happens inline by default; an
owner on an event loop turns that off (`convert_inline=False`), builds the graph from `snapshot()` on a
worker thread with `build_graph` and hands it over with `adopt`.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import hnswlib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
HNSW_FROM = 1024  # brute force below (<= ~0.1 ms a search); building a graph of 1024 takes ~30-60 ms
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100  # 64 builds ~1.5x faster but loses ~0.5% of near-duplicates at 100k (measured)
HNSW_EF = 64
P = TypeVar("P")


def build_graph(rows: Vector, threads: int = 1, capacity: int = 0) -> Any:
    """An hnswlib inner-product graph of `rows` under labels 0..len-1 (safe to run off the event loop)."""
    index = hnswlib.Index(space="ip", dim=rows.shape[1])
    index.init_index(
        max_elements=max(capacity, 2 * len(rows), 64), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION,
        allow_replace_deleted=True,
    )  # fmt: skip
    index.set_ef(HNSW_EF)
    index.set_num_threads(threads)
    if len(rows):
        index.add_items(rows, np.arange(len(rows)))
    return index


class Snapshot(NamedTuple):
    """A brute-force partition's rows at one moment, to build its graph from elsewhere."""

    ids: list[str]
    rows: Vector


class Dropped(NamedTuple, Generic[P]):
    """An entry `PartitionIndexes.add` removed to make room (evicted) or found past its expiry (expired)."""

    entry_id: str
    payload: P | None
    reason: Literal["evicted", "expired"]


class PartitionIndex:
    """One partition's entries: id -> vector, expiry; insertion order is age (oldest first)."""

    def __init__(self, dim: int, hnsw_from: int = HNSW_FROM, threads: int = 1) -> None:
        self.dim = dim
        self._hnsw_from = hnsw_from
        self._threads = threads
        self._slot: dict[str, int] = {}  # entry id -> row (brute) or label (hnsw), in insertion order
        self._expires: dict[str, float] = {}  # math.inf: no expiry
        self._ids: list[str | None] = []  # row/label -> entry id
        self._matrix: Vector = np.zeros((16, dim), dtype=np.float32)  # brute-force rows [0, len)
        self._hnsw: Any = None
        self._free: list[int] = []  # hnsw labels marked deleted, reusable
        self._since_snapshot: set[str] | None = None  # ids (re)added since `snapshot()`

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._slot

    @property
    def is_hnsw(self) -> bool:
        return self._hnsw is not None

    def oldest(self) -> str | None:
        return next(iter(self._slot), None)

    def wants_graph(self) -> bool:
        """Brute force at or past the HNSW size, and no snapshot out for a graph already."""
        return self._hnsw is None and self._since_snapshot is None and len(self._slot) >= self._hnsw_from

    def snapshot(self) -> Snapshot:
        self._since_snapshot = set()
        rows = len(self._slot)
        return Snapshot(list(self._ids[:rows]), self._matrix[:rows].copy())  # type: ignore[arg-type]

    def drop_snapshot(self) -> None:
        """The graph from the last snapshot will not come (its build failed)."""
        self._since_snapshot = None

    def adopt(self, graph: Any, snapshot: Snapshot) -> None:
        """Switch to `graph` (built from `snapshot`), applying what changed since the snapshot."""
        changed = self._since_snapshot or set()
        self._since_snapshot = None
        if self._hnsw is not None:
            return
        current = self._slot
        fresh = [e for e in current if e in changed]  # (re)added since: the newest, last in age order
        fresh_rows = self._matrix[[current[e] for e in fresh]]
        kept: dict[str, int] = {}
        self._ids, self._free, self._hnsw = list(snapshot.ids), [], graph
        for label, entry_id in enumerate(snapshot.ids):
            if entry_id in current and entry_id not in changed:
                kept[entry_id] = label
            else:  # removed or replaced since the snapshot
                graph.mark_deleted(label)
                self._ids[label] = None
                self._free.append(label)
        self._slot = {e: kept[e] for e in current if e in kept}  # the age order stays
        self._matrix = np.zeros((0, self.dim), dtype=np.float32)
        if fresh:
            self._hnsw_add(fresh, np.ascontiguousarray(fresh_rows))

    def expires_at(self, entry_id: str) -> float:
        return self._expires[entry_id]

    def add(self, entry_id: str, vec: Vector, expires_at: float | None = None) -> None:
        self.add_many([entry_id], vec.reshape(1, self.dim), [expires_at])

    def add_many(
        self, ids: list[str], vecs: Vector, expires: Iterable[float | None], convert: bool = True
    ) -> None:
        """Add rows of `vecs` (unit vectors) under `ids`; an id already present is replaced. Reaching the
        HNSW size converts to a graph right away if `convert`, else the owner does (`snapshot`/`adopt`)."""
        for entry_id in ids:
            self.remove(entry_id)
        for entry_id, when in zip(ids, expires, strict=True):
            self._expires[entry_id] = math.inf if when is None else when
        if self._since_snapshot is not None:
            self._since_snapshot.update(ids)
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if convert and self._hnsw is None and len(self._slot) + len(ids) >= self._hnsw_from:
            self._to_hnsw()
        if self._hnsw is None:
            self._brute_add(ids, vecs)
        else:
            self._hnsw_add(ids, vecs)

    def remove(self, entry_id: str) -> bool:
        slot = self._slot.pop(entry_id, None)
        if slot is None:
            return False
        del self._expires[entry_id]
        if self._hnsw is not None:
            self._hnsw.mark_deleted(slot)
            self._ids[slot] = None
            self._free.append(slot)
            return True
        last = len(self._slot)  # rows [0, last] were live: move the last row into the hole
        moved = self._ids.pop()
        if slot != last and moved is not None:
            self._matrix[slot] = self._matrix[last]
            self._ids[slot] = moved
            self._slot[moved] = slot
        return True

    def search(self, vec: Vector, k: int, now: float) -> list[tuple[str, float]]:
        """Up to `k` live entries nearest to `vec`, most similar first; expired ones are removed on sight."""
        return self.search_pruning(vec, k, now)[0]

    def search_pruning(self, vec: Vector, k: int, now: float) -> tuple[list[tuple[str, float]], list[str]]:
        """`search`, and the ids of the expired entries it came across (and removed)."""
        if not self._slot or k <= 0:
            return [], []
        found = self._hnsw_search(vec, k) if self._hnsw is not None else self._brute_search(vec, k)
        live: list[tuple[str, float]] = []
        expired: list[str] = []
        for entry_id, similarity in found:
            if self._expires[entry_id] <= now:
                self.remove(entry_id)
                expired.append(entry_id)
            else:
                live.append((entry_id, similarity))
        return live, expired

    # -- brute force ----------------------------------------------------------------------------------
    def _brute_add(self, ids: list[str], vecs: Vector) -> None:
        start = len(self._ids)
        need = start + len(ids)
        if need > len(self._matrix):
            grown = np.zeros((max(need, 2 * len(self._matrix)), self.dim), dtype=np.float32)
            grown[:start] = self._matrix[:start]
            self._matrix = grown
        self._matrix[start:need] = vecs
        for offset, entry_id in enumerate(ids):
            self._slot[entry_id] = start + offset
            self._ids.append(entry_id)

    def _brute_search(self, vec: Vector, k: int) -> list[tuple[str, float]]:
        scores = self._matrix[: len(self._slot)] @ vec
        if k < len(scores):
            top = np.argpartition(-scores, k)[:k]
            top = top[np.argsort(-scores[top])]
        else:
            top = np.argsort(-scores)
        return [(self._ids[i] or "", float(scores[i])) for i in top]

    def _to_hnsw(self) -> None:
        rows = len(self._slot)
        self._hnsw = build_graph(self._matrix[:rows], self._threads, 2 * self._hnsw_from)
        self._since_snapshot = None  # a snapshot out is obsolete: `adopt` will ignore its graph
        self._matrix = np.zeros((0, self.dim), dtype=np.float32)  # the graph holds the vectors now

    # -- HNSW -----------------------------------------------------------------------------------------
    def _hnsw_add(self, ids: list[str], vecs: Vector) -> None:
        index = self._hnsw
        reuse = min(len(self._free), len(ids))
        labels = [self._free.pop() for _ in range(reuse)]
        fresh = len(ids) - reuse
        labels += range(len(self._ids), len(self._ids) + fresh)
        self._ids.extend([None] * fresh)
        if len(self._ids) > index.get_max_elements():
            index.resize_index(max(len(self._ids), 2 * index.get_max_elements()))
        if reuse:
            index.add_items(vecs[:reuse], labels[:reuse], replace_deleted=True)
        if fresh:
            index.add_items(vecs[reuse:], labels[reuse:])
        for entry_id, label in zip(ids, labels, strict=True):
            self._slot[entry_id] = label
            self._ids[label] = entry_id

    def _hnsw_search(self, vec: Vector, k: int) -> list[tuple[str, float]]:
        k = min(k, len(self._slot))
        while k > 0:
            try:
                labels, distances = self._hnsw.knn_query(vec, k=k)
                break
            except RuntimeError:  # fewer than k reachable live elements (many deleted): ask for fewer
                k //= 2
        else:
            return []
        out = []
        for label, distance in zip(labels[0], distances[0], strict=True):
            entry_id = self._ids[int(label)]
            if entry_id is not None:
                out.append((entry_id, 1.0 - float(distance)))
        return out


class PartitionIndexes(Generic[P]):
    """partition -> PartitionIndex, capped at `max_entries` overall and `max_per_partition` each.

    Each entry may carry a payload (the tier keeps text, model, tenant there). Over a cap the oldest entries
    go (globally, or within the partition); `add` returns what it evicted or found expired, so the owner
    can drop them from Redis and count them."""

    def __init__(
        self,
        dim: int,
        *,
        max_entries: int = 200_000,
        max_per_partition: int = 100_000,
        hnsw_from: int = HNSW_FROM,
        threads: int = 1,
        convert_inline: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dim = dim
        self.max_entries = max_entries
        self.max_per_partition = max_per_partition
        self.hnsw_from = hnsw_from
        self.threads = threads
        self.convert_inline = convert_inline
        self._clock = clock
        self._parts: dict[str, PartitionIndex] = {}
        self._where: dict[str, str] = {}  # entry id -> partition, insertion order = age
        self._payload: dict[str, P] = {}
        self._expiry: list[tuple[float, str]] = []  # heap; stale items skipped on pop

    def __len__(self) -> int:
        return len(self._where)

    @property
    def partitions(self) -> int:
        return len(self._parts)

    def empty_like(self, threads: int | None = None) -> PartitionIndexes[P]:
        """A new empty registry with these settings."""
        return PartitionIndexes(
            self.dim, max_entries=self.max_entries, max_per_partition=self.max_per_partition,
            hnsw_from=self.hnsw_from, threads=self.threads if threads is None else threads,
            convert_inline=self.convert_inline, clock=self._clock,
        )  # fmt: skip

    def partition_of(self, entry_id: str) -> str | None:
        return self._where.get(entry_id)

    def get(self, partition: str) -> PartitionIndex | None:
        return self._parts.get(partition)

    def payload(self, entry_id: str) -> P | None:
        return self._payload.get(entry_id)

    def add(
        self,
        partition: str,
        entry_id: str,
        vec: Vector,
        expires_at: float | None = None,
        payload: P | None = None,
    ) -> list[Dropped[P]]:
        """Index `entry_id`; returns the entries evicted (caps) or pruned (expired) meanwhile."""
        return self.add_many(partition, [entry_id], vec.reshape(1, self.dim), [expires_at], [payload])

    def add_many(
        self,
        partition: str,
        ids: list[str],
        vecs: Vector,
        expires: list[float | None],
        payloads: list[P | None] | None = None,
    ) -> list[Dropped[P]]:
        for entry_id in ids:
            self.remove(entry_id)
        gone = self.prune()
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = PartitionIndex(self.dim, self.hnsw_from, self.threads)
        part.add_many(ids, vecs, expires, self.convert_inline)
        for i, (entry_id, when) in enumerate(zip(ids, expires, strict=True)):
            self._where[entry_id] = partition
            payload = payloads[i] if payloads is not None else None
            if payload is not None:
                self._payload[entry_id] = payload
            if when is not None:
                heapq.heappush(self._expiry, (when, entry_id))
        while len(part) > self.max_per_partition:
            gone.append(self._drop(part.oldest() or "", "evicted"))
        while len(self._where) > self.max_entries:
            gone.append(self._drop(next(iter(self._where)), "evicted"))
        return gone

    def _drop(self, entry_id: str, reason: Literal["evicted", "expired"]) -> Dropped[P]:
        dropped = Dropped(entry_id, self._payload.get(entry_id), reason)
        self.remove(entry_id)
        return dropped

    def reorder(self, oldest_first: Iterable[str]) -> None:
        """Make `oldest_first` the global age order (after a bulk load partition by partition)."""
        order = {e: self._where[e] for e in oldest_first if e in self._where}
        order.update(self._where)  # ids not listed keep their relative order, after the listed ones
        self._where = order

    def remove(self, entry_id: str) -> bool:
        partition = self._where.pop(entry_id, None)
        if partition is None:
            return False
        self._payload.pop(entry_id, None)
        part = self._parts[partition]
        part.remove(entry_id)
        if not len(part):
            del self._parts[partition]
        return True

    def search(self, partition: str, vec: Vector, k: int) -> list[tuple[str, float]]:
        """The partition's `k` nearest live entries to `vec` as (entry id, cosine), most similar first."""
        part = self._parts.get(partition)
        if part is None:
            return []
        found, expired = part.search_pruning(vec, k, self._clock())
        for entry_id in expired:
            del self._where[entry_id]
            self._payload.pop(entry_id, None)
        if not len(part):
            del self._parts[partition]
        return found

    def prune(self, now: float | None = None) -> list[Dropped[P]]:
        """Remove every expired entry; returns them."""
        now = self._clock() if now is None else now
        gone: list[Dropped[P]] = []
        while self._expiry and self._expiry[0][0] <= now:
            when, entry_id = heapq.heappop(self._expiry)
            partition = self._where.get(entry_id)
            if partition is None or self._parts[partition].expires_at(entry_id) != when:
                continue  # removed or re-added since
            gone.append(self._drop(entry_id, "expired"))
        return gone

    def clear(self) -> None:
        self._parts.clear()
        self._where.clear()
        self._payload.clear()
        self._expiry.clear()
