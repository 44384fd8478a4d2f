"""Prometheus metrics of the response cache, in the registry of the process that runs it.

Who counts what (so nothing is counted twice): the cache stage (epp.cache.front) counts requests by outcome,
bypass reasons, time saved, stores (stored or skipped with a reason) and the failed operations it saw
(`epp_cache_errors_total`); the tiers count their own lookups (`epp_cache_lookups_total`, result=error for an
outage: the exact tier by itself, the semantic tier through the tiered cache), similarity, stored bytes and
evictions.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from epp.labelled_metrics import LabelledChildren

SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0)
# One lookup: tens of microseconds (LRU) to a few milliseconds (Redis, embedding + search).
LOOKUP_LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25)


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
        self._requests = LabelledChildren(
            Counter(
                "epp_cache_requests",
                "Cacheable-path requests by outcome: hit-exact, hit-semantic, miss, bypass.",
                ["status"],
                registry=r,
            )
        )
        self._bypasses = LabelledChildren(
            Counter(
                "epp_cache_bypasses", "Requests the cache stayed out of, by reason.", ["reason"], registry=r
            )
        )
        self._lookups = LabelledChildren(
            Counter(
                "epp_cache_lookups",
                "Lookups by tier and result (hit, miss, error).",
                ["tier", "result"],
                registry=r,
            )
        )
        self._lookup_seconds = LabelledChildren(
            Histogram(
                "epp_cache_lookup_duration_seconds",
                "Time of one tier's lookup.",
                ["tier"],
                buckets=LOOKUP_LATENCY_BUCKETS,
                registry=r,
            )
        )
        self._similarity = Histogram(
            "epp_cache_similarity",
            "Best cosine similarity found by semantic lookups.",
            buckets=SIMILARITY_BUCKETS,
            registry=r,
        )
        self._stored_bytes = LabelledChildren(
            Gauge("epp_cache_stored_bytes", "Bytes held in process by each tier.", ["tier"], registry=r)
        )
        self._evictions = LabelledChildren(
            Counter("epp_cache_evictions", "Entries evicted to make room, by tier.", ["tier"], registry=r)
        )
        self._errors = LabelledChildren(
            Counter(
                "epp_cache_errors",
                "Cache operations that failed (lookup, store, admin).",
                ["operation"],
                registry=r,
            )
        )
        self._backend_errors = LabelledChildren(
            Counter(
                "epp_cache_backend_errors",
                "A tier's failed backend calls (Redis), by tier and operation (lookup, store, admin).",
                ["tier", "operation"],
                registry=r,
            )
        )
        self._stores = LabelledChildren(
            Counter(
                "epp_cache_stores",
                "Answers stored, or skipped with the reason (length, error, n>1, too-large, ...).",
                ["result", "reason"],
                registry=r,
            )
        )
        self._stored_answer_bytes = Counter(
            "epp_cache_stored_answer_bytes", "Bytes of the answers stored (all tiers).", registry=r
        )
        self._time_saved = Counter(
            "epp_cache_time_saved_seconds",
            "Model time saved by hits: the stored answers' upstream durations.",
            registry=r,
        )

    def request(self, status: str) -> None:
        self._requests(status).inc()

    def bypassed(self, reason: str) -> None:
        self._bypasses(reason).inc()

    def lookup(self, tier: str, result: str, seconds: float | None = None) -> None:
        self._lookups(tier, result).inc()
        if seconds is not None:
            self._lookup_seconds(tier).observe(seconds)

    def similarity(self, value: float) -> None:
        self._similarity.observe(value)

    def error(self, operation: str) -> None:
        self._errors(operation).inc()

    def backend_error(self, tier: str, operation: str) -> None:
        self._backend_errors(tier, operation).inc()

    def stored(self, result: str, size_bytes: int = 0, reason: str = "") -> None:
        """An answer `result`="stored" (of `size_bytes`) or "skipped" (with the `reason`)."""
        self._stores(result, reason).inc()
        if size_bytes > 0:
            self._stored_answer_bytes.inc(size_bytes)

    def time_saved(self, seconds: float) -> None:
        if seconds > 0:
            self._time_saved.inc(seconds)

    def evicted(self, tier: str, count: int = 1) -> None:
        self._evictions(tier).inc(count)

    def track_bytes(self, tier: str, read: Callable[[], float]) -> None:
        """Report `read()` as the tier's stored bytes whenever Prometheus collects."""
        self._stored_bytes(tier).set_function(read)
