"""The semantic tier: answers a query with the stored answer of a similar enough earlier one.

Lookup: embed the query's text, search its partition's index (partition = tenant, namespace, model,
parameters and the conversation before the last user turn: epp.cache.key), take the candidates at or above
the threshold best first, skip those a guard rejects (numbers, dates, negation, entity swaps:
epp.cache.semantic.guards) or of another model or tenant, and fetch the first one left from Redis.
Entries live in Redis (epp.cache.semantic.records) with their TTL; the in-memory indexes are rebuilt from
there by `load` at start-up. Policy flags (query.lookup/store/semantic) are the caller's (TieredCache);
`max_age_s` is honoured here. A text longer than the model's window (256 tokens) is neither looked up nor
stored: its tail would not reach the embedding, so texts differing only there would match. Any Redis error
or timeout is CacheUnavailable.

Embedding runs on one dedicated worker thread: onnxruntime and the tokenizer release the GIL, so the event
loop keeps serving while a long text is embedded (~2 ms for a short one, ~26 ms at 256 tokens), and one
thread leaves the other core to the loop. For the same reason a partition outgrowing brute force gets its
HNSW graph built on a worker thread (tens of ms), searched by brute force until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from epp.cache.semantic import records
from epp.cache.semantic.embedder import Embedder
from epp.cache.semantic.index import HNSW_M, PartitionIndex, PartitionIndexes, Snapshot, Vector, build_graph
from epp.cache.semantic.records import EntryMeta
from epp.cache.types import CacheHit, CacheQuery, CacheUnavailable, EntryInfo, StoredAnswer

DEFAULT_THRESHOLD = 0.75
DEFAULT_TTL_S = 600.0
CANDIDATES = 5  # nearest entries considered per lookup: the guards may reject the best ones
VECTOR_CACHE = 1024  # recent text -> vector: the store after a miss reuses the lookup's embedding
SCAN_COUNT = 500
T = TypeVar("T")
Guard = Callable[[str, str], bool]
Indexes = PartitionIndexes[EntryMeta]


class RedisSemanticTier:
    """SemanticStore on Redis. The Redis client is the caller's: `close` leaves it open."""

    def __init__(
        self,
        redis: aioredis.Redis,
        embedder: Embedder,
        guard: Guard,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        default_ttl_s: float = DEFAULT_TTL_S,
        op_timeout_s: float = 0.5,
        admin_timeout_s: float = 10.0,  # one round trip of load / truncate / entries (batches of keys)
        indexes: Indexes | None = None,
        candidates: int = CANDIDATES,
        embed_inline: bool = False,  # embed on the event loop (tests, benchmarks), not the worker thread
        load_threads: int = 2,  # hnswlib threads building the indexes in `load` (start-up: both cores)
        on_similarity: Callable[[float], None] | None = None,  # the best similarity of every lookup
        on_evicted: Callable[[int], None] | None = None,  # entries evicted by the index caps
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"similarity threshold {threshold} is not in (0, 1]")
        self.redis = redis
        self.embedder = embedder
        self.guard = guard
        self.threshold = threshold
        self.default_ttl_s = default_ttl_s
        self.op_timeout_s = op_timeout_s
        self.admin_timeout_s = admin_timeout_s
        if indexes is None:
            indexes = PartitionIndexes(embedder.dim, convert_inline=False, clock=clock)
        self.indexes: Indexes = indexes
        self.candidates = candidates
        self.load_threads = load_threads
        self._on_similarity = on_similarity
        self._on_evicted = on_evicted
        self._clock = clock
        self._vectors: OrderedDict[str, Vector] = OrderedDict()
        self._executor = None if embed_inline else ThreadPoolExecutor(1, thread_name_prefix="epp-embed")
        self._replay: list[Callable[[Indexes], object]] | None = None  # index changes made during `load`
        self._tasks: set[asyncio.Task[None]] = set()  # HNSW graphs being built

    @property
    def memory_bytes(self) -> int:
        """An estimate of the indexes' memory: vectors, HNSW links, per-entry bookkeeping and text."""
        return len(self.indexes) * (4 * self.embedder.dim + 8 * HNSW_M + 300)

    async def embed(self, text: str) -> Vector:
        vec = self._vectors.get(text)
        if vec is not None:
            self._vectors.move_to_end(text)
            return vec
        if self._executor is None:
            batch = self.embedder.embed([text])
        else:
            batch = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.embedder.embed, [text]
            )
        vec = np.ascontiguousarray(batch[0], dtype=np.float32)
        self._vectors[text] = vec
        if len(self._vectors) > VECTOR_CACHE:
            self._vectors.popitem(last=False)
        return vec

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        if not self.embedder.fits(query.text):
            return None
        vec = await self.embed(query.text)
        found = self.indexes.search(query.partition, vec, self.candidates)
        if found and self._on_similarity is not None:
            self._on_similarity(found[0][1])
        now = self._clock()
        for entry_id, similarity in found:
            if similarity < self.threshold:
                break
            meta = self.indexes.payload(entry_id)
            if meta is None or meta.model != query.model or meta.tenant != query.tenant:
                continue
            if query.max_age_s is not None and now - meta.created_at > query.max_age_s:
                continue
            if not self.guard(query.text, meta.text):
                continue
            values = await self._call(self.redis.hmget(meta.key, list(records.HIT_FIELDS)), "lookup")
            decoded = records.decode_hit(cast(list[bytes | None], values))
            if decoded is None:  # expired or deleted behind our back
                self._remove(entry_id)
                continue
            answer, tenant = decoded
            if answer.model != query.model or tenant != query.tenant:
                continue
            return CacheHit(answer, "semantic", entry_id, min(1.0, similarity))
        return None

    async def store(self, query: CacheQuery, answer: StoredAnswer) -> str:
        """Keep `answer` for the query's TTL (its own, else the default); returns the new entry's id, or ""
        when the text is too long to embed whole (nothing stored)."""
        if not self.embedder.fits(query.text):
            return ""
        vec = await self.embed(query.text)
        ttl_s = query.ttl_s if query.ttl_s is not None else self.default_ttl_s
        entry_id = secrets.token_hex(16)
        key = records.redis_key(query.model, entry_id)
        expires_at = self._clock() + ttl_s
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=records.encode(query, answer, vec, self.embedder.name, expires_at))  # type: ignore[arg-type]
        pipe.pexpire(key, max(1, math.ceil(ttl_s * 1000)))
        await self._call(pipe.execute(), "store")
        meta = EntryMeta(key, query.model, query.tenant, query.text, answer.created_at)
        dropped = self.indexes.add(query.partition, entry_id, vec, expires_at, meta)
        self._maybe_build_graph(query.partition)
        if self._replay is not None:
            self._replay.append(lambda ix: ix.add(query.partition, entry_id, vec, expires_at, meta))
        evicted = [d.payload.key for d in dropped if d.reason == "evicted" and d.payload is not None]
        if evicted:
            if self._on_evicted is not None:
                self._on_evicted(len(evicted))
            # over the caps: Redis must not bring them back at the next load (failing, their TTL ends them)
            with contextlib.suppress(CacheUnavailable):
                await self._call(self.redis.unlink(*evicted), "store")
        return entry_id

    async def delete(self, entry_id: str) -> bool:
        if not records.ENTRY_ID.fullmatch(entry_id):
            return False
        meta = self.indexes.payload(entry_id)
        keys = [meta.key] if meta is not None else await self._scan(f"{records.PREFIX}*:{entry_id}")
        self._remove(entry_id)
        if not keys:
            return False
        return bool(await self._call(self.redis.unlink(*keys), "admin", self.admin_timeout_s))

    async def truncate(self, model: str) -> int:
        removed = 0
        async for batch in self._scan_batches(records.model_pattern(model)):
            removed += await self._call(self.redis.unlink(*batch), "admin", self.admin_timeout_s)
            for key in batch:
                self._remove(records.entry_id_of(key))
        return removed

    async def entries(self, model: str | None, limit: int) -> list[EntryInfo]:
        """Up to `limit` entries (of `model`, or all), newest first."""
        keys: list[bytes] = []
        async with aclosing(self._scan_batches(records.model_pattern(model))) as batches:
            async for batch in batches:
                keys += batch[: limit - len(keys)]
                if len(keys) >= limit:
                    break
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, list(records.INFO_FIELDS))
            pipe.hstrlen(key, "answer")
            pipe.pttl(key)
        replies = await self._call(pipe.execute(), "admin", self.admin_timeout_s) if keys else []
        now = self._clock()
        out = []
        for i, key in enumerate(keys):
            (name, tenant, created_at, text), size, pttl = replies[3 * i : 3 * i + 3]
            if name is None or (model is not None and name.decode() != model):
                continue
            out.append(
                EntryInfo(
                    entry_id=records.entry_id_of(key),
                    tier="semantic",
                    model=name.decode(),
                    tenant=(tenant or b"").decode(),
                    created_at=float(created_at or 0),
                    expires_at=now + pttl / 1000 if pttl > 0 else None,
                    size_bytes=int(size) + 4 * self.embedder.dim + len(text or b""),
                    text=(text or b"").decode(errors="replace"),
                )
            )
        out.sort(key=lambda e: e.created_at, reverse=True)
        return out

    async def load(self) -> int:
        """Rebuild the indexes from Redis; stores and deletes made meanwhile are replayed onto them."""
        self._replay = []
        try:
            loaded = await self.read_entries()
            fresh = await asyncio.to_thread(records.build_indexes, loaded, self.indexes, self.load_threads)
            for change in self._replay:
                change(fresh)
            self.indexes = fresh
            return len(fresh)
        finally:
            self._replay = None

    async def read_entries(self) -> list[records.Loaded]:
        """Every unexpired entry in Redis of this tier's embedder, without its answer."""
        loaded: list[records.Loaded] = []
        now = self._clock()
        async for batch in self._scan_batches(records.PREFIX + "*"):
            pipe = self.redis.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, list(records.LOAD_FIELDS))
            replies = await self._call(pipe.execute(), "admin", self.admin_timeout_s)
            for key, values in zip(batch, replies, strict=True):
                entry = records.decode_load(key, values, self.embedder.name, self.embedder.dim)
                if entry is not None and (entry.expires_at is None or entry.expires_at > now):
                    loaded.append(entry)
        return loaded

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def settle(self) -> None:
        """Wait for the HNSW graphs being built (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- helpers --------------------------------------------------------------------------------------
    def _maybe_build_graph(self, partition: str) -> None:
        part = self.indexes.get(partition)
        if part is not None and part.wants_graph():
            task = asyncio.create_task(self._build_graph(part, part.snapshot()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _build_graph(self, part: PartitionIndex, snapshot: Snapshot) -> None:
        try:
            graph = await asyncio.to_thread(build_graph, snapshot.rows, 1, 2 * len(snapshot.ids))
        except BaseException:
            part.drop_snapshot()
            raise
        part.adopt(graph, snapshot)

    def _remove(self, entry_id: str) -> None:
        self.indexes.remove(entry_id)
        if self._replay is not None:
            self._replay.append(lambda ix: ix.remove(entry_id))

    async def _scan(self, pattern: str) -> list[bytes]:
        return [key async for batch in self._scan_batches(pattern) for key in batch]

    async def _scan_batches(self, pattern: str) -> AsyncGenerator[list[bytes], None]:
        cursor = 0
        while True:
            cursor, keys = await self._call(
                self.redis.scan(cursor, match=pattern, count=SCAN_COUNT), "admin", self.admin_timeout_s
            )
            if keys:
                yield cast(list[bytes], keys)
            if cursor == 0:
                return

    async def _call(self, op: Awaitable[T], operation: str, timeout_s: float | None = None) -> T:
        async with self._guard(operation, timeout_s or self.op_timeout_s):
            return await op

    @asynccontextmanager
    async def _guard(self, operation: str, timeout_s: float) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(timeout_s):
                yield
        except (RedisError, OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise CacheUnavailable(f"redis (semantic {operation}): {why}") from exc


def semantic_tier_from(
    redis: aioredis.Redis,
    metrics: Any,
    threshold: float | None,
    *,
    default_ttl_s: float = DEFAULT_TTL_S,
    op_timeout_s: float = 0.5,
    model_dir: Path | None = None,
) -> RedisSemanticTier:
    """epp.cache.service.build's SemanticFactory: the int8 MiniLM (built into `model_dir`, default
    $EPP_MODEL_DIR or ~/.cache/epp/models, on first use) and epp.cache.semantic.guards."""
    from epp.cache.semantic.embedder import load_embedder
    from epp.cache.semantic.guards import compatible

    tier = RedisSemanticTier(
        redis,
        load_embedder("minilm-int8", model_dir),
        compatible,
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        default_ttl_s=default_ttl_s,
        op_timeout_s=op_timeout_s,
        on_evicted=lambda n: metrics.evicted("semantic", n),
    )
    metrics.track_bytes("semantic", lambda: tier.memory_bytes)
    return tier
