"""The in-process ResponseCache: the exact tier first, the semantic tier (when the query allows it) second.

Stores go to both tiers (semantic only for semantic queries); an outage of either makes the call raise
CacheUnavailable, but only after the other tier had its turn. Admin operations span both tiers: an entry id
names its tier (the exact tier's ids are `{model_digest}:{key}`, anything else is the semantic tier's).
"""

from __future__ import annotations

import time

from epp.cache.exact import ENTRY_ID, ExactTier
from epp.cache.metrics import CacheMetrics
from epp.cache.types import CacheHit, CacheQuery, CacheUnavailable, EntryInfo, SemanticStore, StoredAnswer


class TieredCache:
    def __init__(self, exact: ExactTier, semantic: SemanticStore | None, metrics: CacheMetrics) -> None:
        self.exact = exact
        self.semantic = semantic
        self._metrics = metrics

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        if not query.lookup:
            return None
        hit = await self.exact.lookup(query)
        if hit is not None or not query.semantic or self.semantic is None:
            return hit
        started = time.perf_counter()
        try:
            hit = await self.semantic.lookup(query)
        except CacheUnavailable:
            self._metrics.lookup("semantic", "error", time.perf_counter() - started)
            raise
        self._metrics.lookup("semantic", "miss" if hit is None else "hit", time.perf_counter() - started)
        if hit is not None and hit.similarity is not None:
            self._metrics.similarity(hit.similarity)
        return hit

    async def store(self, query: CacheQuery, answer: StoredAnswer) -> None:
        if not query.store:
            return
        failure: CacheUnavailable | None = None
        try:
            await self.exact.store(query, answer)
        except CacheUnavailable as exc:
            failure = exc
        if query.semantic and self.semantic is not None:
            try:
                await self.semantic.store(query, answer)
            except CacheUnavailable as exc:
                self._metrics.backend_error("semantic", "store")
                failure = failure or exc
        if failure is not None:
            raise failure

    async def get(self, entry_id: str) -> tuple[EntryInfo, StoredAnswer] | None:
        """An exact-tier entry and its answer (the semantic tier lists its entries through `entries`)."""
        return await self.exact.get(entry_id)

    async def delete(self, entry_id: str) -> bool:
        if ENTRY_ID.fullmatch(entry_id):
            return await self.exact.delete(entry_id)
        return self.semantic is not None and await self.semantic.delete(entry_id)

    async def entries(self, model: str | None, limit: int) -> list[EntryInfo]:
        """Up to `limit` entries: the exact tier's first, then the semantic tier's."""
        out = await self.exact.entries(model, limit)
        if self.semantic is not None and len(out) < limit:
            out += await self.semantic.entries(model, limit - len(out))
        return out

    async def truncate(self, model: str) -> int:
        """Delete every entry of `model` in both tiers; returns how many."""
        removed = await self.exact.truncate(model)
        if self.semantic is not None:
            removed += await self.semantic.truncate(model)
        return removed

    async def load(self) -> int:
        """Rebuild the semantic tier's indexes from Redis (the exact tier needs nothing); returns entries."""
        return await self.semantic.load() if self.semantic is not None else 0

    async def close(self) -> None:
        try:
            if self.semantic is not None:
                await self.semantic.close()
        finally:
            await self.exact.close()
