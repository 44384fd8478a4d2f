"""The picking core every front end shares: datastore, metrics, scheduler, pick service and scraper.

`epp serve` (EppApp) and `epp gateway` both build one `PickerCore` from the loaded config and the endpoint
list (`merge_endpoints`), start its scraper, and put their own servers in front of `core.service`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from epp.config import ConfigError, EppConfig, load_config, parse_endpoints
from epp.config.errors import ConfigIssue, DocumentRef
from epp.datastore import Datastore, Endpoint
from epp.metrics import EppMetrics
from epp.picking import PickService
from epp.scheduling.builder import build_scheduler
from epp.scheduling.plugins import PluginConfigError
from epp.servers.http import DEFAULT_MAX_BODY_BYTES
from metrics_scraper.fetch import AiohttpFetcher
from metrics_scraper.scraper import Scraper
from scorers.builtin import default_registry


@dataclass(frozen=True)
class PickerOptions:
    """What every front end is asked for about the pool and its picking (`epp serve`, `epp gateway`)."""

    config_paths: list[str] = field(default_factory=list)
    endpoints: str | None = None  # "host:port,..." added to the config's static endpoints
    strategy: str | None = None  # overrides the pool annotation / EndpointPickerConfig
    host: str = "127.0.0.1"
    scrape_interval_s: float = 0.05
    scrape_timeout_s: float = 0.5
    staleness_s: float = 1.0
    seed: int | None = None
    log_level: str = "INFO"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


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


class PickerCore:
    """One pool's picking state. Raises ConfigError when the picker config cannot be built."""

    def __init__(
        self, config: EppConfig, endpoints: list[Endpoint], staleness_s: float, seed: int | None
    ) -> None:
        self.config = config
        self.datastore = Datastore(staleness_s=staleness_s)
        self.datastore.set_endpoints(endpoints)
        self.metrics = EppMetrics(self.datastore)
        self.rng = random.Random(seed)
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
        self._scraper: Scraper | None = None
        self._own_fetcher: AiohttpFetcher | None = None

    def start_scraping(
        self, interval_s: float, timeout_s: float, client: httpx.AsyncClient | None = None
    ) -> None:
        """Scrape every endpoint's /metrics; `client` (owned by the caller) defaults to one of our own."""
        if client is None:
            self._own_fetcher = AiohttpFetcher()
        source = client if client is not None else self._own_fetcher
        assert source is not None
        self._scraper = Scraper(self.datastore, source, interval_s, timeout_s, observer=self.metrics)
        self._scraper.start()

    async def stop_scraping(self) -> None:
        if self._scraper is not None:
            await self._scraper.stop()
            self._scraper = None
        if self._own_fetcher is not None:
            await self._own_fetcher.close()
            self._own_fetcher = None
