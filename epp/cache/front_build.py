"""CacheSettings -> the cache stage (CacheFront) over the cache the settings name, for either data plane.

Where the cache lives: `cache_service` (the `--cache-service` flag) wins — `in-process` for the tiers in
this process on Redis, or a URL of an `epp cache serve`; without it, the settings' backend (the seed's
WasmPlugin names its HTTP cache service by `service` and `port`; `--resolve` overrides can point that
host at a local address, as for providers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from epp.cache.front import CacheFront, FrontOptions
from epp.cache.metrics import CacheMetrics
from epp.cache.service.build import build_tiered, cache_policy
from epp.cache.service.client import HttpCacheClient
from epp.cache.tiered import TieredCache
from epp.cache.types import CacheUnavailable, ResponseCache
from epp.config.cache import CacheSettings
from epp.traffic.resolve import Address, OverrideResolver

logger = logging.getLogger(__name__)
IN_PROCESS = "in-process"
SERVICE_TIMEOUT_S = 2.0  # one call to the cache service; the stage bounds a lookup by its own timeout


def build_front(
    settings: CacheSettings,
    registry: CollectorRegistry,
    cache_service: str | None = None,
    overrides: Mapping[Address, Address] | None = None,
) -> CacheFront:
    """The stage; raises ValueError for a bad `cache_service`."""
    metrics = CacheMetrics(registry)
    cache: ResponseCache
    where = cache_service or (settings.service_url if settings.backend == "service" else IN_PROCESS)
    if where == IN_PROCESS or where is None:
        cache = build_tiered(settings, metrics)
    else:
        resolver = OverrideResolver(overrides) if overrides else None
        cache = HttpCacheClient(where, SERVICE_TIMEOUT_S, resolver=resolver)
    options = FrontOptions(settings.fail_open, settings.lookup_timeout_s)
    return CacheFront(cache, settings.selects, cache_policy(settings), metrics, options)


async def start_front(front: CacheFront) -> None:
    """Rebuild the semantic tier's indexes from Redis in the background: requests are served meanwhile
    (the tier takes stores and deletes during a load); an outage leaves them empty, to fill again."""
    if isinstance(front.cache, TieredCache) and front.cache.semantic is not None:
        front.in_background(_load(front.cache))


async def _load(cache: TieredCache) -> None:
    try:
        entries = await cache.load()
    except CacheUnavailable as exc:
        logger.warning("semantic cache: could not reload its entries from Redis (%s); starting empty", exc)
    else:
        logger.info("semantic cache: %d entries reloaded from Redis", entries)
