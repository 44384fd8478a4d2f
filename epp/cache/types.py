"""What every part of the response cache shares: the query a request becomes, a stored answer, a hit.

A `CacheQuery` is built once per request (epp.cache.policy) and carries everything a tier needs, so a tier
never sees the client's credentials or raw headers: `tenant` is a digest of the API key, not the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Tier = Literal["exact", "semantic"]
RequestKind = Literal["chat", "completion"]  # /v1/chat/completions, /v1/completions

# Response headers both planes set on a request the cache stage selected.
CACHE_HEADER = "x-epp-cache"
SIMILARITY_HEADER = "x-epp-cache-similarity"
HIT_EXACT = "hit-exact"
HIT_SEMANTIC = "hit-semantic"
MISS = "miss"
BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class CacheQuery:
    """One cacheable request as the cache sees it."""

    kind: RequestKind
    tenant: str  # hex digest of the client's credential ("anonymous" without one): never the key itself
    namespace: str  # the body's `cache.namespace` ("" by default): a further isolation scope
    model: str
    key: str  # exact-tier key: hex sha256 of the canonical request (epp.cache.key)
    partition: str  # semantic partition: digest of everything but the last user turn (epp.cache.key)
    text: str  # what the semantic tier embeds: the last user message (chat) or the prompt (completion)
    lookup: bool = True  # False for `no-cache` (look nothing up, store the fresh answer)
    store: bool = True  # False for `no-store`
    semantic: bool = False  # the semantic tier is enabled for this request (opt-in per route or model)
    ttl_s: float | None = None  # the request's own `cache.ttl`; None: the cache's default
    max_age_s: float | None = None  # `Cache-Control: max-age=N`: only entries stored at most N s ago


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A complete, replayable answer: always the non-streamed JSON form (a streamed one is assembled)."""

    body: bytes  # chat.completion or text_completion JSON as the model sent it (usage included)
    model: str
    created_at: float  # unix time it was stored
    upstream_s: float  # how long the model took to answer: the time a hit saves
    text: str = ""  # the query's `text` (semantic tier, admin listing)


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: StoredAnswer
    tier: Tier
    entry_id: str  # the tier's id for the entry (admin API: inspect, delete)
    similarity: float | None = None  # semantic hits only: cosine similarity of the matched entry


class CacheUnavailable(Exception):
    """The cache could not answer (Redis down, the cache service unreachable or too slow).

    The stage decides what that means: FAIL_OPEN treats it as a miss, fail-closed answers 503."""


class ResponseCache(Protocol):
    """A cache of answers; the tiered in-process cache and the cache-service client both implement it."""

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        """The stored answer for `query`, or None; raises CacheUnavailable on an outage."""
        ...

    async def store(self, query: CacheQuery, answer: StoredAnswer) -> None:
        """Keep `answer` for `query`; raises CacheUnavailable on an outage."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """One stored entry as the admin API lists it (never the tenant's credential: only its digest)."""

    entry_id: str
    tier: Tier
    model: str
    tenant: str
    created_at: float
    expires_at: float | None
    size_bytes: int
    text: str = ""


class SemanticStore(Protocol):
    """The semantic tier as the tiered cache and the cache service use it (epp.cache.semantic.tier)."""

    async def lookup(self, query: CacheQuery) -> CacheHit | None: ...

    async def store(self, query: CacheQuery, answer: StoredAnswer) -> str:
        """Keep `answer`; returns the new entry's id."""
        ...

    async def delete(self, entry_id: str) -> bool: ...

    async def truncate(self, model: str) -> int:
        """Delete every entry of `model`; returns how many."""
        ...

    async def entries(self, model: str | None, limit: int) -> list[EntryInfo]: ...

    async def load(self) -> int:
        """Rebuild the in-memory indexes from Redis (at start-up); returns the entries loaded."""
        ...

    async def close(self) -> None: ...
