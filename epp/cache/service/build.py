"""CacheSettings (epp.config.cache) -> the cache's parts: the TieredCache on Redis, the stage's policy.

`build_tiered` is what `epp cache serve` runs and what an in-process cache stage can run too; the semantic
tier is built only when asked for (it loads the embedding model: about a second and 100 MB).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from epp.cache.exact import ExactTier, connect_redis
from epp.cache.lru import ByteLRU
from epp.cache.metrics import CacheMetrics
from epp.cache.policy import CachePolicy
from epp.cache.tiered import TieredCache
from epp.cache.types import SemanticStore, StoredAnswer
from epp.config.cache import CacheSettings

# (redis client, metrics, threshold or None, default TTL s, Redis call timeout s) -> the semantic tier; tests
# may pass their own.
SemanticFactory = Callable[[aioredis.Redis, CacheMetrics, float | None, float, float], SemanticStore]
DEFAULT_OP_TIMEOUT_S = 0.5  # one Redis call: an outage fails within this


def build_tiered(
    settings: CacheSettings,
    metrics: CacheMetrics,
    *,
    semantic: bool | None = None,
    semantic_factory: SemanticFactory | None = None,
    op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
) -> TieredCache:
    """The exact tier (LRU + Redis) and, when `semantic` (default: the settings say so), the semantic tier.

    Nothing connects yet: redis-py connects on the first call, so a Redis outage at start-up is one more
    outage (503 / fail-open), not a start-up failure.
    """
    redis = connect_redis(
        settings.redis.address, settings.redis.password.get_secret_value(), timeout_s=op_timeout_s
    )
    lru: ByteLRU[StoredAnswer] | None = None
    if settings.memory_bytes > 0:
        lru = ByteLRU(settings.memory_bytes, on_evict=lambda _key, _size: metrics.evicted("exact"))
    exact = ExactTier(redis, lru, settings.default_ttl_s, op_timeout_s, metrics)
    store: SemanticStore | None = None
    if settings.semantic.enabled if semantic is None else semantic:
        factory = semantic_factory or default_semantic_factory()
        store = factory(redis, metrics, settings.semantic.threshold, settings.default_ttl_s, op_timeout_s)
    return TieredCache(exact, store, metrics)


def default_semantic_factory() -> SemanticFactory:
    """epp.cache.semantic.tier's SemanticTier, imported only when the semantic tier is on."""
    module: Any = importlib.import_module("epp.cache.semantic.tier")

    def factory(
        redis: aioredis.Redis, metrics: CacheMetrics, threshold: float | None, ttl_s: float, op_s: float
    ) -> SemanticStore:
        store: SemanticStore = module.semantic_tier_from(
            redis, metrics, threshold, default_ttl_s=ttl_s, op_timeout_s=op_s
        )
        return store

    return factory


def cache_policy(settings: CacheSettings) -> CachePolicy:
    """The stage's policy: TTL, sampling, namespace, entry size, and which models use the semantic tier."""
    return CachePolicy(
        default_ttl_s=settings.default_ttl_s,
        cache_sampled=settings.cache_sampled,
        semantic_models=settings.semantic.applies,
        max_entry_bytes=settings.max_entry_bytes,
        namespace=settings.namespace,
    )
