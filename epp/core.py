"""The picking core every front end shares: datastore, health, metrics, scheduler, director and scraper.

`epp serve` (EppApp) and `epp gateway` both build one `PickerCore` from the loaded config and the endpoint
list (`merge_endpoints`), start it (scraper, model catalog, outlier sweeps), and put their own transports in
front of `core.director`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from epp.config import ConfigError, EppConfig, load_config, parse_endpoints
from epp.config.errors import ConfigIssue, DocumentRef
from epp.config.kv_events import effective_kv_events
from epp.datastore import Datastore, Endpoint, EndpointEvent
from epp.discovery.build import Discovery, build_discovery
from epp.discovery.options import DiscoveryOptions
from epp.health.outlier import OutlierDetector
from epp.kv_events.follower import KVEventFollower
from epp.kv_events.precise_index import PreciseIndex
from epp.metrics import DEFAULT_POOL, EppMetrics
from epp.model_catalog import ModelCatalog
from epp.pod_auth import PodCredentials
from epp.requestcontrol.director import Director, DirectorSettings
from epp.scheduling.builder import build_scheduler
from epp.scheduling.plugins import PluginConfigError
from epp.servers.http import DEFAULT_MAX_BODY_BYTES
from metrics_scraper.fetch import AiohttpFetcher
from metrics_scraper.scraper import (
    DEFAULT_IDLE_INTERVAL_S,
    DEFAULT_INTERVAL_S,
    Scraper,
    min_staleness_s,
)
from scorers.builtin import default_registry


@dataclass(frozen=True)
class PickerOptions:
    """What every front end is asked for about the pool and its picking (`epp serve`, `epp gateway`)."""

    config_paths: list[str] = field(default_factory=list)
    endpoints: str | None = None  # "host:port,..." added to the config's static endpoints
    strategy: str | None = None  # overrides the pool annotation / EndpointPickerConfig
    host: str = "127.0.0.1"
    scrape_interval_s: float = DEFAULT_INTERVAL_S  # a busy pod's (metrics_scraper.scraper)
    scrape_idle_interval_s: float = DEFAULT_IDLE_INTERVAL_S  # an idle pod's
    scrape_timeout_s: float = 0.5
    staleness_s: float = 1.0
    seed: int | None = None
    log_level: str = "INFO"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_attempts: int = 2  # pods tried per request (gateway retries, Envoy fallbacks + 1)
    pod_credentials: PodCredentials | None = None  # the pods' API key (epp.pod_auth); repr redacted
    config_reload_interval_s: float = 2.0  # poll the config files for changes (0: only on SIGHUP)
    cache_service: str | None = None  # the response cache: "in-process" or a URL (None: as configured)
    # --discovery: the pods from the apiserver or a file (epp.discovery), added to the static endpoints
    discovery: DiscoveryOptions | None = None


def load_pool(options: PickerOptions, env: Mapping[str, str]) -> tuple[EppConfig, list[Endpoint]]:
    """The loaded config and the pool's endpoints; ConfigError (file, document, field, reason) if bad."""
    config = load_config([Path(p) for p in options.config_paths], env, strategy=options.strategy)
    return config, merge_endpoints(config, options.endpoints)


def merge_endpoints(config: EppConfig, endpoints: str | None) -> list[Endpoint]:
    """The config's static endpoints plus `--endpoints` ("host:port,..."); ConfigError on a duplicate."""
    merged = list(config.static_endpoints)
    if endpoints:
        for endpoint in parse_endpoints(endpoints):
            if any(e.name == endpoint.name for e in merged):
                issue = ConfigIssue(
                    DocumentRef("--endpoints"), f"endpoint {endpoint.name!r} is already in the config"
                )
                raise ConfigError([issue])
            merged.append(endpoint)
    return merged


logger = logging.getLogger(__name__)


class PickerCore:
    """One pool's picking state. Raises ConfigError when the picker config cannot be built."""

    def __init__(
        self,
        config: EppConfig,
        endpoints: list[Endpoint],
        staleness_s: float,
        seed: int | None,
        max_attempts: int = 2,
        pod_credentials: PodCredentials | None = None,
        discovery: DiscoveryOptions | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`discovery` adds the pods it finds to `endpoints` (static ones win a name clash); `env` is where
        in-cluster discovery finds KUBERNETES_SERVICE_HOST/PORT."""
        self.config = config
        self._static_endpoints = list(endpoints)
        self.pod_credentials = pod_credentials
        self.outlier = OutlierDetector(config.outlier_settings, listener=self._on_ejection)
        self.datastore = Datastore(staleness_s=staleness_s, outlier=self.outlier)
        self.datastore.subscribe(self._on_endpoint_event)
        self.datastore.set_endpoints(endpoints)
        pool = next(iter(config.pools.values()), None)
        self.metrics = EppMetrics(
            self.datastore,
            pool_name=pool.name if pool is not None else DEFAULT_POOL,
            namespace=(pool.metadata.namespace or "") if pool is not None else "",
        )
        self.metrics.requests.reserve_models(configured_models(config))
        self.rng = random.Random(seed)
        picker = config.picker_config
        # One index of the pods' KV events per pool, when they are followed (kvEvents or a precise scorer).
        kv_spec = effective_kv_events(picker.kv_events, [p.type for p in picker.plugins])
        self.kv_index: PreciseIndex | None = None if kv_spec is None else PreciseIndex()
        try:
            self.scheduler = build_scheduler(
                picker,
                self.datastore,
                default_registry(),
                self.rng,
                timer=self.metrics,
                kv_index=self.kv_index,
            )
        except PluginConfigError as exc:
            where = ", ".join(str(s) for s in config.sources) or "--strategy"
            raise ConfigError(
                [ConfigIssue(DocumentRef(where, kind="EndpointPickerConfig"), str(exc))]
            ) from None
        # Trust the environment for nothing: pods are reached directly, never through an HTTP(S)_PROXY.
        self.models_client = httpx.AsyncClient(trust_env=False, timeout=2.0)
        self.kv_follower: KVEventFollower | None = None
        if kv_spec is not None and self.kv_index is not None:
            self.kv_follower = KVEventFollower(
                self.datastore,
                self.kv_index,
                kv_spec,
                client=self.models_client,
                registry=self.metrics.registry,
            )
        self.catalog = ModelCatalog(
            self.datastore, self.models_client, config.models, credentials=pod_credentials
        )
        resolver = config.models if len(config.models) else None  # no InferenceModels: models pass through
        self.director = Director(
            self.scheduler,
            self.datastore,
            resolver,
            self.metrics,
            self.rng,
            DirectorSettings(config.strategy_name, max_attempts=max_attempts),
            outlier=self.outlier,
            adapters=self.catalog,
            observer=self.metrics,
        )
        self._scraper: Scraper | None = None
        self._own_fetcher: AiohttpFetcher | None = None
        self._catalog_task: asyncio.Task[None] | None = None
        self.discovery: Discovery | None = None
        if discovery is not None:
            self.use_discovery(discovery, env or {})

    def health(self) -> dict[str, object]:
        """What /healthz adds: pod discovery's state (up, since when, why not), when discovery is on, and
        each pod's KV-event stream (synced / unknown / not subscribed) when KV events are followed."""
        out: dict[str, object] = {}
        if self.discovery is not None:
            out["discovery"] = self.discovery.status.as_dict()
        if self.kv_follower is not None:
            out["kvEvents"] = self.kv_follower.statuses()
        return out

    def use_discovery(self, options: DiscoveryOptions, env: Mapping[str, str]) -> None:
        """Follow a discovery source from `start_scraping` on; ConfigError when it cannot be set up."""
        try:
            self.discovery = build_discovery(
                options, self.config, self._on_discovered, self.metrics.registry, env
            )
        except ValueError as exc:  # KubeConfigError: not in a cluster, no pool named
            raise ConfigError([ConfigIssue(DocumentRef("--discovery"), str(exc))]) from None

    def _on_discovered(self, discovered: list[Endpoint]) -> None:
        static = {e.name for e in self._static_endpoints}
        self.datastore.set_endpoints(
            [*self._static_endpoints, *(e for e in discovered if e.name not in static)]
        )

    def _on_endpoint_event(self, event: EndpointEvent, endpoint: Endpoint) -> None:
        if event is not EndpointEvent.RESTARTED:
            self.outlier.set_hosts(e.name for e in self.datastore.endpoints())

    def _on_ejection(self, host: str, ejected: bool, reason: str) -> None:
        if ejected:
            state = self.outlier.state(host)
            until = state.ejected_until if state is not None else None
            logger.warning("endpoint %s ejected (%s) until monotonic %.1f", host, reason, until or 0.0)
        else:
            logger.info("endpoint %s back from ejection (%s)", host, reason)
        self.metrics.on_ejection(host, ejected, reason)

    def start_scraping(
        self,
        interval_s: float,
        timeout_s: float,
        client: httpx.AsyncClient | None = None,
        idle_interval_s: float | None = None,
    ) -> None:
        """Start discovery (if any), then scrape every endpoint's /metrics (busy pods every `interval_s`, idle
        ones every `idle_interval_s`, None: also `interval_s`) and their /v1/models; `client` (the caller's)
        defaults to ours. The staleness bound is raised, with a warning, if an idle pod would outlive it."""
        if self.discovery is not None:
            self.discovery.start()
        if client is None:
            self._own_fetcher = AiohttpFetcher()
        source = client if client is not None else self._own_fetcher
        assert source is not None
        self._scraper = Scraper(
            self.datastore,
            source,
            interval_s,
            timeout_s,
            observer=self.metrics,
            idle_interval_s=idle_interval_s,
        )
        needed = min_staleness_s(self._scraper.idle_interval_s, timeout_s)
        if self.datastore.staleness_s < needed:
            logger.warning(
                "staleness bound raised from %gs to %gs: an idle pod is scraped every %gs and a scrape may "
                "take %gs",
                self.datastore.staleness_s,
                needed,
                self._scraper.idle_interval_s,
                timeout_s,
            )
            self.datastore.staleness_s = needed
        self._scraper.start()
        if self.kv_follower is not None:
            self.kv_follower.start()
        self._catalog_task = asyncio.create_task(self.catalog.run(), name="model-catalog")

    async def stop_scraping(self) -> None:
        """Stop discovery, the scrape loop and the catalog's refresh loop; the catalog still answers from what
        it has and refreshes on demand."""
        if self.discovery is not None:
            await self.discovery.close()
        task, self._catalog_task = self._catalog_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._scraper is not None:
            await self._scraper.stop()
            self._scraper = None
        if self.kv_follower is not None:
            await self.kv_follower.stop()
        if self._own_fetcher is not None:
            await self._own_fetcher.close()
            self._own_fetcher = None

    async def close(self) -> None:
        """Stop scraping and close the /v1/models client (at shutdown: requests may still ask the catalog
        until the servers have stopped)."""
        await self.stop_scraping()
        await self.models_client.aclose()


def configured_models(config: EppConfig) -> list[str]:
    """The model names the config itself names (InferenceModels and their targets): they keep their own
    metric label whatever clients send."""
    names: list[str] = []
    for name in config.models:
        names.append(name)
        spec = config.models.lookup(name)
        if spec is not None:
            names += [target for target, _ in spec.target_weights()]
    return names
