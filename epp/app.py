"""Build the endpoint picker from config and run it: scraper, scheduler, ext_proc gRPC and HTTP servers.

Everything is created here and passed down; nothing is global. `EppApp.run()` serves until SIGINT/SIGTERM
(or `request_stop()`), then stops the servers and the scraper in order. The traffic documents are reloaded
on a file change or SIGHUP (epp.config_reload); the rest of the config is restart-only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from epp.cache.front import CacheFront
from epp.cache.front_build import build_front, start_front
from epp.config import EppConfig, load_config
from epp.config.traffic.config import TrafficConfig
from epp.config_reload import ConfigWatcher
from epp.core import PickerCore, PickerOptions, load_pool
from epp.datastore import Endpoint
from epp.embedded_http import EmbeddedServer
from epp.lifecycle import wait_for_shutdown
from epp.servers.extproc import ExtProcServer
from epp.servers.extproc_cache import ExtProcCache
from epp.servers.extproc_traffic import TrafficProcessor
from epp.servers.http import create_http_app
from epp.traffic.routing import TrafficRouter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions(PickerOptions):
    """What `epp serve` was asked for (ports 0 pick free ports)."""

    grpc_port: int = 9002
    http_port: int = 9003
    fallback_endpoints: int = 0  # ext_proc: extra candidates listed after the pick, for retries


def build_app(options: ServeOptions, env: Mapping[str, str]) -> EppApp:
    """Load config and build every part; raises ConfigError (file, document, field, reason) on bad input."""
    config, endpoints = load_pool(options, env)
    return EppApp(config, endpoints, options, traffic=config.traffic, env=env)


class EppApp:
    """One endpoint picker: the picking core (datastore, scraper, scheduler) and both servers."""

    def __init__(
        self,
        config: EppConfig,
        endpoints: list[Endpoint],
        options: ServeOptions,
        scrape_client: httpx.AsyncClient | None = None,
        traffic: TrafficConfig | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`scrape_client` (owned by the caller) is what the scraper uses; by default epp makes its own.
        `traffic`: the LLMProvider/LLMRoute documents, chosen by the ext_proc server (extproc_traffic).
        `env`: what `${VAR}` in the config expands from on a reload (default: nothing)."""
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
        self.metrics = self.core.metrics
        self.rng = self.core.rng
        self.director = self.core.director
        self.traffic = TrafficProcessor(TrafficRouter(traffic, self.rng)) if traffic is not None else None
        self.http_app = create_http_app(
            self.director, self.datastore, self.metrics.registry, options.max_body_bytes, self.core.health
        )
        self.cache: CacheFront | None = None
        if config.cache is not None:
            self.cache = build_front(config.cache, self.metrics.registry, options.cache_service)
        self.extproc = ExtProcServer(
            self.director,
            options.host,
            options.grpc_port,
            options.max_body_bytes,
            options.fallback_endpoints,
            pod_credentials=options.pod_credentials,
            traffic=self.traffic,
            cache=ExtProcCache(self.cache) if self.cache is not None else None,
        )
        paths = [Path(p) for p in options.config_paths]
        self.reloader = ConfigWatcher(
            paths,
            config,
            lambda: load_config(paths, env or {}, strategy=options.strategy),
            self._apply_reload,
            self.metrics.registry,
            options.config_reload_interval_s,
        )
        self._scrape_client = scrape_client
        self._http = EmbeddedServer(self.http_app, options.host, options.http_port, options.log_level)
        self._stop = asyncio.Event()
        self.http_port = options.http_port
        self.grpc_port = options.grpc_port

    def _apply_reload(self, new: EppConfig) -> Sequence[str]:
        """Swap in the new traffic documents; what could not be applied (for the reload's log line)."""
        if self.traffic is None:  # the ext_proc server was built without a traffic processor
            return ["traffic documents (none at start-up)"] if new.traffic is not None else []
        # No documents left: an empty set, so every request takes the pool path as without any.
        self.traffic.replace(TrafficRouter(new.traffic or TrafficConfig(), self.rng))
        return []

    async def start(self) -> None:
        """Start scraping and both servers; sets `grpc_port` and `http_port` to the bound ports."""
        opts = self.options
        self.core.start_scraping(
            opts.scrape_interval_s,
            opts.scrape_timeout_s,
            self._scrape_client,
            idle_interval_s=opts.scrape_idle_interval_s,
        )
        if self.cache is not None:
            await start_front(self.cache)
        self.grpc_port = await self.extproc.start()
        self.http_port = await self._http.start()
        self.reloader.start()
        logger.info(
            "epp serving: ext_proc grpc %s:%d, http %s:%d, strategy %s, %d endpoints, staleness %.3gs",
            opts.host,
            self.grpc_port,
            opts.host,
            self.http_port,
            self.config.strategy_name,
            len(self.datastore.endpoints()),
            opts.staleness_s,
        )
        if not self.datastore.endpoints() and self.core.discovery is None:
            logger.warning(
                "no endpoints configured (--endpoints or a StaticEndpoints document): /pick answers 503"
            )

    async def stop(self) -> None:
        """Stop serving (in-flight HTTP and gRPC calls get a short grace period), then stop scraping."""
        await self.reloader.close()
        await self._http.stop()
        await self.extproc.stop(grace=2.0)
        if self.cache is not None:
            await self.cache.close()
        await self.core.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM or request_stop(), or until the HTTP server exits on its own."""
        try:
            await self.start()
            assert self._http.task is not None
            await wait_for_shutdown(self._stop, self._http.task, self.reloader.request_reload)
            logger.info("epp shutting down")
        finally:
            await self.stop()
