"""Build the gateway from config and run it: the picking core, the upstream client, the pipeline, the server.

`Gateway.run()` serves until SIGINT/SIGTERM (or `request_stop()`), then stops the server, the scraper and the
upstream connections in order. The traffic documents are reloaded on a file change or SIGHUP
(epp.config_reload); the rest of the config is restart-only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from epp import limits
from epp.cache.front import CacheFront
from epp.cache.front_build import build_front, start_front
from epp.config import EppConfig, load_config
from epp.config.traffic.config import TrafficConfig
from epp.config_reload import ConfigWatcher
from epp.core import PickerCore, PickerOptions, load_pool
from epp.datastore import Endpoint
from epp.embedded_http import EmbeddedServer
from epp.lifecycle import wait_for_shutdown
from epp.routes import MODELS_PATH, AllowedRoutes
from epp.traffic.resolve import OverrideResolver, parse_overrides
from gateway.app import OWN_PATHS, BodyLimits, GatewayApp
from gateway.cache_stage import CacheStage
from gateway.edge import EdgeLimits, edge_protocol
from gateway.forward import ForwardStage
from gateway.metrics import GatewayMetrics
from gateway.own_paths import OwnPathsOnly
from gateway.pipeline import ModelCheckStage, ParseStage, Pipeline, ScheduleStage, Stage
from gateway.providers import ProviderStage
from gateway.record import RequestRecorder
from gateway.traffic_metrics import TrafficMetrics
from gateway.traffic_swap import SwappableProviders
from gateway.upstream import UpstreamPool, UpstreamTimeouts

logger = logging.getLogger(__name__)


DEFAULT_ALLOWED = AllowedRoutes()


@dataclass(frozen=True)
class GatewayOptions(PickerOptions):
    """What `epp gateway` was asked for (port 0 picks a free port)."""

    port: int = 8000
    connect_timeout_s: float = 2.0  # reaching a pod; a failure is retried on another pod
    first_byte_timeout_s: float = 300.0  # the pod's first body byte (a JSON answer's comes when it is done)
    chunk_timeout_s: float = 60.0  # longest silence from a pod mid-answer
    max_connections: int = 1024  # upstream connections, all pods together
    allowed_routes: AllowedRoutes = DEFAULT_ALLOWED  # the rest: JSON 404
    max_header_bytes: int = limits.DEFAULT_MAX_HEADER_BYTES
    max_headers: int = limits.DEFAULT_MAX_HEADERS
    header_timeout_s: float = limits.DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = limits.DEFAULT_BODY_TIMEOUT_S
    idle_timeout_s: float = limits.DEFAULT_IDLE_TIMEOUT_S
    max_buffered_body_bytes: int = limits.DEFAULT_MAX_BUFFERED_BODY_BYTES
    drain_timeout_s: float = 10.0  # on SIGTERM: in-flight requests may finish within this, then are cut
    resolve: tuple[str, ...] = ()  # `host:port=addr:port` overrides for provider hosts (--resolve)
    retry_on_fallback: bool = True  # a provider failing before the first byte: retry once on its fallback
    clock: Callable[[], float] = time.monotonic  # outlier detection's (tests inject a fake one)
    reuse_port: bool = False  # SO_REUSEPORT: `--workers N` processes listen on the same port
    metrics_port: int | None = None  # also serve /metrics and /healthz alone here (0: a free port)


def check_routes(routes: AllowedRoutes) -> None:
    """ValueError unless the gateway can serve every route: POST is proxied, GET only on /v1/models."""
    for route in routes.routes:
        if route.path in OWN_PATHS:
            raise ValueError(f"route {route}: {route.path} is the gateway's own")
        if route.method != "POST" and str(route) != f"GET {MODELS_PATH}":
            raise ValueError(
                f"route {route}: the gateway proxies POST routes only (and serves GET {MODELS_PATH})"
            )


def build_gateway(options: GatewayOptions, env: Mapping[str, str]) -> Gateway:
    """Load config and build every part; raises ConfigError (file, document, field, reason) on bad input,
    ValueError for routes the gateway cannot serve."""
    check_routes(options.allowed_routes)
    parse_overrides(options.resolve)  # ValueError for a bad entry, before anything is loaded
    return Gateway(*load_pool(options, env), options, env=env)


class Gateway:
    """One gateway: a picking core, its scraper, a pooled upstream client and the HTTP server."""

    def __init__(
        self,
        config: EppConfig,
        endpoints: list[Endpoint],
        options: GatewayOptions,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: what `${VAR}` in the config expands from, on a reload too (default: nothing)."""
        self.config = config
        self.options = options
        self.core = PickerCore(
            config,
            endpoints,
            options.staleness_s,
            options.seed,
            max_attempts=options.max_attempts,
            pod_credentials=options.pod_credentials,
            discovery=options.discovery,
            env=env,
        )
        self.datastore = self.core.datastore
        registry = self.core.metrics.registry
        self.metrics = GatewayMetrics(registry)
        timeouts = UpstreamTimeouts(
            options.connect_timeout_s, options.first_byte_timeout_s, options.chunk_timeout_s
        )
        self.upstream = UpstreamPool(timeouts, options.max_connections)
        self.catalog = self.core.catalog
        director = self.core.director
        stages: list[Stage] = []
        self.cache: CacheFront | None = None
        if config.cache is not None:  # first: a hit is answered before providers and scheduling
            overrides = parse_overrides(options.resolve)
            self.cache = build_front(config.cache, registry, options.cache_service, overrides)
            stages.append(CacheStage(self.cache))
        self.traffic_metrics: TrafficMetrics | None = None
        self.provider_upstream: UpstreamPool | None = None
        self._providers: SwappableProviders | None = None
        if config.traffic is not None:
            # Own connections: the resolver overrides apply to providers only, never to pods.
            resolver = OverrideResolver(parse_overrides(options.resolve))
            self.provider_upstream = UpstreamPool(timeouts, options.max_connections, resolver=resolver)
            self.traffic_metrics = TrafficMetrics(registry)
            self._providers = SwappableProviders(self._provider_stage(config.traffic))
            stages.append(self._providers)
        paths = [Path(p) for p in options.config_paths]
        self.reloader = ConfigWatcher(
            paths,
            config,
            lambda: load_config(paths, env or {}, strategy=options.strategy),
            self._apply_reload,
            registry,
            options.config_reload_interval_s,
        )
        self.pipeline = Pipeline(
            [
                *stages,
                ParseStage(director),
                ModelCheckStage(self.catalog),
                ScheduleStage(director),
                ForwardStage(self.upstream, options.pod_credentials),
            ]
        )
        self.app = GatewayApp(
            self.pipeline,
            self.catalog,
            self.datastore,
            self.metrics,
            RequestRecorder(self.metrics, config.strategy_name, self.traffic_metrics),
            registry,
            BodyLimits(options.max_body_bytes, options.body_timeout_s, options.max_buffered_body_bytes),
            options.allowed_routes,
            self.core.health,
        )
        edge = EdgeLimits(
            options.max_header_bytes,
            options.max_headers,
            options.header_timeout_s,
            options.body_timeout_s,
            options.idle_timeout_s,
        )
        self._server = EmbeddedServer(
            self.app,
            options.host,
            options.port,
            options.log_level,
            "gateway",
            graceful_shutdown_s=options.drain_timeout_s,
            protocol=edge_protocol(edge),
            reuse_port=options.reuse_port,
        )
        self._metrics_server: EmbeddedServer | None = None
        if options.metrics_port is not None:
            self._metrics_server = EmbeddedServer(
                OwnPathsOnly(self.app), options.host, options.metrics_port, options.log_level, "metrics"
            )
        self._stop = asyncio.Event()
        self.port = options.port
        self.metrics_port = options.metrics_port

    def _provider_stage(self, traffic: TrafficConfig) -> ProviderStage:
        # A new stage per version: its outlier detectors start afresh (ejections do not survive a reload).
        assert self.provider_upstream is not None and self.traffic_metrics is not None
        opts = self.options
        return ProviderStage(
            traffic,
            self.provider_upstream,
            self.traffic_metrics,
            random.Random(opts.seed),
            opts.clock,
            opts.retry_on_fallback,
        )

    def _apply_reload(self, new: EppConfig) -> Sequence[str]:
        """Swap in the new traffic documents; what could not be applied (for the reload's log line)."""
        if self._providers is None:
            # No provider connections or metrics were set up at start-up.
            return ["traffic documents (none at start-up)"] if new.traffic is not None else []
        self._providers.current = None if new.traffic is None else self._provider_stage(new.traffic)
        return []

    @property
    def providers(self) -> ProviderStage | None:
        """The provider stage requests arriving now get (None: no traffic documents)."""
        return None if self._providers is None else self._providers.current

    @property
    def base_url(self) -> str:
        return self._url(self.port)

    @property
    def metrics_url(self) -> str | None:
        """Where this process alone answers /metrics and /healthz (None: only on the main port)."""
        return None if self.metrics_port is None else self._url(self.metrics_port)

    def _url(self, port: int) -> str:
        host = self.options.host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def start(self) -> None:
        """Start scraping and serving; sets `port` to the bound port."""
        opts = self.options
        await self.upstream.open()
        if self.provider_upstream is not None:
            await self.provider_upstream.open()
        if self.cache is not None:
            await start_front(self.cache)
        self.core.start_scraping(
            opts.scrape_interval_s, opts.scrape_timeout_s, idle_interval_s=opts.scrape_idle_interval_s
        )
        if self._metrics_server is not None:
            self.metrics_port = await self._metrics_server.start()
        self.port = await self._server.start()
        self.reloader.start()
        logger.info(
            "epp gateway serving %s/v1: strategy %s, %d endpoints, staleness %.3gs",
            self.base_url,
            self.config.strategy_name,
            len(self.datastore.endpoints()),
            opts.staleness_s,
        )
        if not self.datastore.endpoints() and self.core.discovery is None:
            logger.warning("no endpoints configured (--endpoints or a StaticEndpoints document): all 503")

    async def stop(self) -> None:
        """Stop serving (in-flight requests get `drain_timeout_s`), scraping, upstream connections."""
        await self.reloader.close()
        await self._server.stop()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        await self.core.close()
        if self.cache is not None:
            await self.cache.close()
        await self.upstream.close()
        if self.provider_upstream is not None:
            await self.provider_upstream.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[Gateway], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM or request_stop(), or until the server exits on its own.

        `on_ready` is called once the server accepts connections. `stop()` runs in any case.
        """
        try:
            await self.start()
            assert self._server.task is not None
            ready = None if on_ready is None else (lambda: on_ready(self))
            await wait_for_shutdown(self._stop, self._server.task, self.reloader.request_reload, ready)
            logger.info("epp gateway shutting down")
        finally:
            await self.stop()
