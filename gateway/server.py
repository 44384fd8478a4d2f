"""Build the gateway from config and run it: the picking core, the upstream client, the pipeline, the server.

`Gateway.run()` serves until SIGINT/SIGTERM (or `request_stop()`), then stops the server, the scraper and the
upstream connections in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from epp.config import EppConfig, load_config
from epp.core import PickerCore, merge_endpoints
from epp.datastore import Endpoint
from epp.embedded_http import EmbeddedServer
from epp.servers.http import DEFAULT_MAX_BODY_BYTES
from gateway.app import GatewayApp
from gateway.forward import ForwardStage, UpstreamPool
from gateway.metrics import GatewayMetrics
from gateway.models import ModelCatalog
from gateway.pipeline import ModelCheckStage, ParseStage, Pipeline, ScheduleStage
from gateway.record import RequestRecorder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayOptions:
    """What `epp gateway` was asked for (port 0 picks a free port)."""

    config_paths: list[str] = field(default_factory=list)
    endpoints: str | None = None  # "host:port,..." added to the config's static endpoints
    strategy: str | None = None  # overrides the pool annotation / EndpointPickerConfig
    host: str = "127.0.0.1"
    port: int = 8000
    scrape_interval_s: float = 0.05
    scrape_timeout_s: float = 0.5
    staleness_s: float = 1.0
    seed: int | None = None
    log_level: str = "INFO"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    connect_timeout_s: float = 2.0  # reaching a pod; a refusal is retried on the next-best pod
    read_timeout_s: float = 600.0  # longest silence from a pod mid-answer (long generations are slow)
    max_connections: int = 1024  # upstream connections, all pods together


def build_gateway(options: GatewayOptions, env: Mapping[str, str]) -> Gateway:
    """Load config and build every part; raises ConfigError (file, document, field, reason) on bad input."""
    config = load_config([Path(p) for p in options.config_paths], env, strategy=options.strategy)
    return Gateway(config, merge_endpoints(config, options.endpoints), options)


class Gateway:
    """One gateway: a picking core, its scraper, a pooled upstream client and the HTTP server."""

    def __init__(self, config: EppConfig, endpoints: list[Endpoint], options: GatewayOptions) -> None:
        self.config = config
        self.options = options
        self.core = PickerCore(config, endpoints, options.staleness_s, options.seed)
        self.datastore = self.core.datastore
        registry = self.core.metrics.registry
        self.metrics = GatewayMetrics(registry)
        # Inference requests go through `upstream`; `client` only serves the rare /v1/models lookups.
        # trust_env=False: pods are reached directly, never through an HTTP(S)_PROXY from the environment.
        self.client = httpx.AsyncClient(
            trust_env=False,
            timeout=httpx.Timeout(options.read_timeout_s, connect=options.connect_timeout_s),
        )
        self.upstream = UpstreamPool(
            options.connect_timeout_s, options.read_timeout_s, options.max_connections
        )
        self.catalog = ModelCatalog(self.datastore, self.client, config.models)
        service = self.core.service
        self.pipeline = Pipeline(
            [
                ParseStage(service),
                ModelCheckStage(self.catalog),
                ScheduleStage(service),
                ForwardStage(self.upstream, self.datastore, self.metrics),
            ]
        )
        self.app = GatewayApp(
            self.pipeline,
            self.catalog,
            self.datastore,
            self.metrics,
            RequestRecorder(self.metrics, config.strategy_name),
            registry,
            options.max_body_bytes,
        )
        self._server = EmbeddedServer(self.app, options.host, options.port, options.log_level, "gateway")
        self._stop = asyncio.Event()
        self.port = options.port

    @property
    def base_url(self) -> str:
        host = self.options.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        """Start scraping and serving; sets `port` to the bound port."""
        opts = self.options
        await self.upstream.open()
        self.core.start_scraping(opts.scrape_interval_s, opts.scrape_timeout_s)
        self.port = await self._server.start()
        logger.info(
            "epp gateway serving %s/v1: strategy %s, %d endpoints, staleness %.3gs",
            self.base_url,
            self.config.strategy_name,
            len(self.datastore.endpoints()),
            opts.staleness_s,
        )
        if not self.datastore.endpoints():
            logger.warning("no endpoints configured (--endpoints or a StaticEndpoints document): all 503")

    async def stop(self) -> None:
        """Stop serving (in-flight requests get a short grace period), scraping, upstream connections."""
        await self._server.stop()
        await self.core.stop_scraping()
        await self.upstream.close()
        await self.client.aclose()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[Gateway], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM or request_stop(), or until the server exits on its own.

        `on_ready` is called once the server accepts connections. `stop()` runs in any case.
        """
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread / platform
                loop.add_signal_handler(sig, self.request_stop)
                handled.append(sig)
        try:
            await self.start()
            if on_ready is not None:
                on_ready(self)
            assert self._server.task is not None
            stop_wait = asyncio.create_task(self._stop.wait())
            await asyncio.wait({stop_wait, self._server.task}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            logger.info("epp gateway shutting down")
        finally:
            await self.stop()
            for sig in handled:
                loop.remove_signal_handler(sig)
