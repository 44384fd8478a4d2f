"""Scrape every endpoint's /metrics into the datastore, often while the pod is busy and seldom while idle.

Each endpoint gets its own asyncio task that scrapes, waits for the next tick and scrapes again, so a slow pod
never delays the others and scrapes of one pod never overlap. The supervising loop re-reads the datastore's
membership every interval and starts or cancels those tasks. A failed scrape is recorded in the datastore,
which makes the endpoint unschedulable until a later scrape succeeds.

Adaptive cadence: a pod whose last scrape showed nothing running or waiting, that epp has no request in flight
to and whose scrapes succeed is idle and scraped every `idle_interval_s`; any other pod every `interval_s`.
When epp sends a request to an idle pod, the datastore wakes its task, which scrapes `interval_s` after that
send; until then the datastore's in-flight bridge (epp.datastore.bridged) carries the send. Every scrape costs
the pod CPU (a real vLLM API server ~0.45% of a core per scrape per second): docs/scraping.md has the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Protocol

import httpx

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from metrics_scraper.fetch import FetchError, HttpxFetcher, MetricsFetcher
from metrics_scraper.vllm_mapping import ScrapeError, VllmMetricsParser

logger = logging.getLogger(__name__)

# From bench/scrape_cost.py (docs/scraping.md): 4 scrapes a second cost a vLLM API server 1.9% of a core, so
# a busy pod is scraped that often and an idle one twice a second (1.0%); the bridge carries sends between.
DEFAULT_INTERVAL_S = 0.25
DEFAULT_IDLE_INTERVAL_S = 0.5


def min_staleness_s(idle_interval_s: float, timeout_s: float) -> float:
    """The smallest staleness bound under which a healthy idle pod never goes stale between two scrapes: the
    next scrape starts one idle interval after the last began and may take up to the timeout."""
    return idle_interval_s + timeout_s


class ScrapeObserver(Protocol):
    """Told about every scrape; the server layer implements it to export Prometheus metrics."""

    def on_scrape(
        self,
        endpoint_name: str,
        ok: bool,
        duration_s: float,
        snapshot: MetricsSnapshot | None,
        error: str | None,
    ) -> None: ...


class Scraper:
    """Scrapes `http://host:port/metrics` of every datastore endpoint: every `interval_s` while the pod is
    busy, every `idle_interval_s` while it is idle (None: `interval_s`, a fixed cadence).

    `client` (an httpx client or a MetricsFetcher) is owned by the caller; its connection pool limits bound
    how many pods can be scraped at once.
    `timeout_s` bounds a whole scrape (connect, send, read the full body).
    """

    def __init__(
        self,
        datastore: Datastore,
        client: httpx.AsyncClient | MetricsFetcher,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = 0.5,
        observer: ScrapeObserver | None = None,
        idle_interval_s: float | None = DEFAULT_IDLE_INTERVAL_S,
    ) -> None:
        self.datastore = datastore
        self.fetcher: MetricsFetcher = (
            HttpxFetcher(client) if isinstance(client, httpx.AsyncClient) else client
        )
        self.interval_s = interval_s
        # Never faster when idle than when busy: a lower idle interval would be a busier idle.
        self.idle_interval_s = max(interval_s, idle_interval_s if idle_interval_s is not None else interval_s)
        self.timeout_s = timeout_s
        self._wakers: dict[str, asyncio.Event] = {}  # per endpoint, set when epp sends it a request
        self.observer = observer
        self._parser = VllmMetricsParser()
        self._tasks: dict[str, tuple[Endpoint, asyncio.Task[None]]] = {}
        self._failing: dict[str, bool] = {}  # last known state per endpoint, to log only changes
        # Per endpoint, the last good body and its snapshot: an unchanged body (an idle pod) is not re-parsed.
        self._last_good: dict[str, tuple[bytes, MetricsSnapshot]] = {}
        self._run_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Run `run()` in a background task."""
        if self._run_task is None or self._run_task.done():
            self._run_task = asyncio.create_task(self.run(), name="metrics-scraper")

    async def stop(self) -> None:
        """Cancel the background task and every per-endpoint scrape."""
        task, self._run_task = self._run_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Scrape until cancelled, following datastore membership changes."""
        self.datastore.subscribe_sends(self._on_send)
        try:
            while True:
                self._reconcile()
                await asyncio.sleep(self.interval_s)
        finally:
            self.datastore.unsubscribe_sends(self._on_send)
            tasks = [task for _, task in self._tasks.values()]
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def scrape_once(self) -> dict[str, bool]:
        """Scrape every current endpoint once, concurrently; returns success per endpoint name.

        For one-off use (tools, tests); calling it while `run()` is active may overlap scrapes of a pod.
        """
        endpoints = self.datastore.endpoints()
        results = await asyncio.gather(*(self._scrape(e) for e in endpoints))
        return {e.name: ok for e, ok in zip(endpoints, results, strict=True)}

    # -- internals --------------------------------------------------------------------------------------
    def _reconcile(self) -> None:
        wanted = {e.name: e for e in self.datastore.endpoints()}
        for name, (endpoint, task) in list(self._tasks.items()):
            if wanted.get(name) != endpoint or task.done():  # removed, moved, or (by a bug) finished
                task.cancel()
                del self._tasks[name]
                if name not in wanted:
                    self._failing.pop(name, None)
                self._last_good.pop(name, None)
        for name, endpoint in wanted.items():
            if name not in self._tasks:
                task = asyncio.create_task(self._scrape_forever(endpoint), name=f"scrape-{name}")
                self._tasks[name] = (endpoint, task)

    def _on_send(self, name: str) -> None:
        wake = self._wakers.get(name)
        if wake is not None:
            wake.set()

    def is_busy(self, name: str) -> bool:
        """Whether `name` is scraped at the busy cadence: not known to be idle and healthy."""
        state = self.datastore.get(name)
        if state is None or state.in_flight > 0 or self._failing.get(name, True):
            return True
        m = state.scraped or state.metrics
        return m is None or m.running + m.waiting > 0

    async def _scrape_forever(self, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wakers[endpoint.name] = asyncio.Event()
        next_at = loop.time()
        crashed = False
        try:
            while True:
                wake.clear()  # a send during the scrape leaves in_flight > 0: busy below
                try:
                    await self._scrape(endpoint)
                    crashed = False
                except Exception:  # a bug in an observer or datastore listener must not stop scraping
                    if not crashed:
                        logger.exception("scrape of %s raised", endpoint.name)
                    crashed = True
                busy = self.is_busy(endpoint.name)
                next_at += self.interval_s if busy else self.idle_interval_s
                now = loop.time()
                if next_at < now:  # the scrape overran: skip missed ticks instead of bursting to catch up
                    next_at = now
                if busy or self.idle_interval_s == self.interval_s:
                    await asyncio.sleep(next_at - now)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_at):
                        await wake.wait()
                    # epp sent the idle pod a request: look one busy interval later, when the pod has it.
                    woke = loop.time()
                    next_at = min(next_at, woke + self.interval_s)
                    await asyncio.sleep(next_at - woke)
        finally:
            if self._wakers.get(endpoint.name) is wake:
                del self._wakers[endpoint.name]

    async def _scrape(self, endpoint: Endpoint) -> bool:
        started = time.monotonic()
        snapshot: MetricsSnapshot | None = None
        error: str | None = None
        timed_out = False
        try:
            async with asyncio.timeout(self.timeout_s):
                status, body = await self.fetcher.get(f"{endpoint.base_url}/metrics")
            if status != 200:
                raise ScrapeError(f"HTTP {status}")
            snapshot = self._snapshot(endpoint.name, body)
        except TimeoutError:
            error = f"timed out after {self.timeout_s:g}s"
            timed_out = True
        except (FetchError, ScrapeError) as exc:
            error = str(exc)
        duration = time.monotonic() - started
        # The endpoint may have been removed or replaced (same name, new address) while we were waiting.
        state = self.datastore.get(endpoint.name)
        if state is None or state.endpoint != endpoint:
            return False
        if snapshot is not None:
            self.datastore.update_metrics(endpoint.name, snapshot)
        else:
            assert error is not None
            self.datastore.record_scrape_failure(endpoint.name, error, timed_out=timed_out)
        self._log_outcome(endpoint, error)
        if self.observer is not None:
            self.observer.on_scrape(endpoint.name, snapshot is not None, duration, snapshot, error)
        return snapshot is not None

    def _snapshot(self, name: str, body: bytes) -> MetricsSnapshot:
        now = time.monotonic()
        last = self._last_good.get(name)
        if last is not None and last[0] == body:
            return dataclasses.replace(last[1], scraped_at=now)
        snapshot = self._parser.parse(body.decode("utf-8", errors="replace"), scraped_at=now)
        self._last_good[name] = (body, snapshot)
        return snapshot

    def _log_outcome(self, endpoint: Endpoint, error: str | None) -> None:
        was_failing = self._failing.get(endpoint.name)
        failing = error is not None
        self._failing[endpoint.name] = failing
        if failing:
            logger.debug("scrape of %s (%s) failed: %s", endpoint.name, endpoint.address, error)
            if was_failing is not True:
                logger.warning("endpoint %s (%s) scrapes failing: %s", endpoint.name, endpoint.address, error)
        elif was_failing is not False:
            logger.info("endpoint %s (%s) scrapes healthy", endpoint.name, endpoint.address)
