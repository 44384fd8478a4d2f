"""Build the endpoint picker from config and run it: scraper, scheduler, ext_proc gRPC and HTTP servers.

Everything is created here and passed down; nothing is global. `EppApp.run()` serves until SIGINT/SIGTERM
(or `request_stop()`), then stops the servers and the scraper in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from epp.config import ConfigError, EppConfig, load_config, parse_endpoints
from epp.config.errors import ConfigIssue, DocumentRef
from epp.datastore import Datastore, Endpoint
from epp.metrics import EppMetrics
from epp.picking import PickService
from epp.scheduling.builder import build_scheduler
from epp.scheduling.plugins import PluginConfigError
from epp.servers.extproc import ExtProcServer
from epp.servers.http import DEFAULT_MAX_BODY_BYTES, create_http_app
from metrics_scraper.scraper import Scraper
from scorers.builtin import default_registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """What `epp serve` was asked for (ports 0 pick free ports)."""

    config_paths: list[str] = field(default_factory=list)
    endpoints: str | None = None  # "host:port,..." added to the config's static endpoints
    strategy: str | None = None  # overrides the pool annotation / EndpointPickerConfig
    grpc_port: int = 9002
    http_port: int = 9003
    host: str = "127.0.0.1"
    scrape_interval_s: float = 0.05
    scrape_timeout_s: float = 0.5
    staleness_s: float = 1.0
    seed: int | None = None
    log_level: str = "INFO"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def build_app(options: ServeOptions, env: Mapping[str, str]) -> EppApp:
    """Load config and build every part; raises ConfigError (file, document, field, reason) on bad input."""
    config = load_config([Path(p) for p in options.config_paths], env, strategy=options.strategy)
    endpoints = list(config.static_endpoints)
    if options.endpoints:
        for endpoint in parse_endpoints(options.endpoints):
            if any(e.name == endpoint.name for e in endpoints):
                issue = ConfigIssue(
                    DocumentRef("--endpoints"), f"endpoint {endpoint.name!r} is already in the config"
                )
                raise ConfigError([issue])
            endpoints.append(endpoint)
    return EppApp(config, endpoints, options)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: EppApp handles signals and shuts everything down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class EppApp:
    """One endpoint picker: a datastore, its scraper, the scheduler and both servers."""

    def __init__(
        self,
        config: EppConfig,
        endpoints: list[Endpoint],
        options: ServeOptions,
        scrape_client: httpx.AsyncClient | None = None,
    ) -> None:
        """`scrape_client` (owned by the caller) is what the scraper uses; by default epp makes its own."""
        self.config = config
        self.options = options
        self.datastore = Datastore(staleness_s=options.staleness_s)
        self.datastore.set_endpoints(endpoints)
        self.metrics = EppMetrics(self.datastore)
        self.rng = random.Random(options.seed)
        try:
            scheduler = build_scheduler(config.picker_config, self.datastore, default_registry(), self.rng)
        except PluginConfigError as exc:
            where = ", ".join(str(s) for s in config.sources) or "--strategy"
            raise ConfigError(
                [ConfigIssue(DocumentRef(where, kind="EndpointPickerConfig"), str(exc))]
            ) from None
        resolver = config.models if len(config.models) else None  # no InferenceModels: models pass through
        self.service = PickService(
            scheduler, self.datastore, resolver, self.metrics, self.rng, config.strategy_name
        )
        self.http_app = create_http_app(
            self.service, self.datastore, self.metrics.registry, options.max_body_bytes
        )
        self.extproc = ExtProcServer(
            self.service, self.datastore, options.host, options.grpc_port, options.max_body_bytes
        )
        self._given_client = scrape_client
        self._client: httpx.AsyncClient | None = None
        self._scraper: Scraper | None = None
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.http_port = options.http_port
        self.grpc_port = options.grpc_port

    async def start(self) -> None:
        """Start scraping and both servers; sets `grpc_port` and `http_port` to the bound ports."""
        opts = self.options
        # trust_env=False: pods are reached directly, never through an HTTP(S)_PROXY from the environment.
        client = self._given_client
        if client is None:
            client = self._client = httpx.AsyncClient(trust_env=False, timeout=opts.scrape_timeout_s)
        self._scraper = Scraper(
            self.datastore, client, opts.scrape_interval_s, opts.scrape_timeout_s, observer=self.metrics
        )
        self._scraper.start()
        self.grpc_port = await self.extproc.start()
        sock = _listen(opts.host, opts.http_port)
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.http_app,
            log_level=opts.log_level.lower(),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._http = _Uvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="epp-http")
        # uvicorn exposes startup only as a flag, so poll it.
        while not self._http.started and not self._http_task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._http_task.done():
            self._http_task.result()  # surfaces the startup error
            raise OSError(f"HTTP server on {opts.host}:{self.http_port} exited at startup")
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
        if not self.datastore.endpoints():
            logger.warning(
                "no endpoints configured (--endpoints or a StaticEndpoints document): /pick answers 503"
            )

    async def stop(self) -> None:
        """Stop serving (in-flight HTTP and gRPC calls get a short grace period), then stop scraping."""
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await self._http_task
            self._http = self._http_task = None
        await self.extproc.stop(grace=2.0)
        if self._scraper is not None:
            await self._scraper.stop()
            self._scraper = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM or request_stop(), or until the HTTP server exits on its own."""
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread / platform
                loop.add_signal_handler(sig, self.request_stop)
                handled.append(sig)
        try:
            await self.start()
            assert self._http_task is not None
            stop_wait = asyncio.create_task(self._stop.wait())
            await asyncio.wait({stop_wait, self._http_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            logger.info("epp shutting down")
        finally:
            await self.stop()
            for sig in handled:
                loop.remove_signal_handler(sig)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
