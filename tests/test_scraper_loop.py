"""The scraper against real HTTP servers on loopback whose /metrics answers the tests control."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from epp.datastore import Datastore, Endpoint, EndpointEvent, MetricsSnapshot
from epp.health.endpoint_health import HealthState
from metrics_scraper import Scraper
from metrics_scraper.fetch import AiohttpFetcher, FetchError, MetricsFetcher

INTERVAL = 0.02
ScrapeClient = httpx.AsyncClient | MetricsFetcher
DEADLINE = 5.0


def vllm_body(waiting: int = 0, start: float = 100.0) -> str:
    return (
        "# TYPE process_start_time_seconds gauge\n"
        f"process_start_time_seconds {start}\n"
        f'vllm:num_requests_waiting{{engine="0"}} {waiting}\n'
        'vllm:num_requests_running{engine="0"} 1\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.5\n'
    )


class FakePod:
    """HTTP/1.1 server on 127.0.0.1 whose /metrics answer follows `mode`: ok, 500, hang, close or garbage."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.body = vllm_body()
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.endpoint = Endpoint(name, "127.0.0.1", 0)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = Endpoint(self.name, "127.0.0.1", port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.mode == "hang":
                    await asyncio.Event().wait()
                if self.mode == "close":
                    return
                status = "500 Internal Server Error" if self.mode == "500" else "200 OK"
                body = (b"\x00garbage{{" if self.mode == "garbage" else self.body.encode()) + b"\n"
                head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
                writer.write(head.encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()


async def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for: {what}")
        await asyncio.sleep(0.005)


def snapshot_of(ds: Datastore, name: str) -> MetricsSnapshot | None:
    state = ds.get(name)
    return None if state is None else state.metrics


def schedulable(ds: Datastore, name: str) -> bool:
    state = ds.get(name)
    return state is not None and ds.is_schedulable(state)


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, MetricsSnapshot | None, str | None]] = []

    def on_scrape(
        self,
        endpoint_name: str,
        ok: bool,
        duration_s: float,
        snapshot: MetricsSnapshot | None,
        error: str | None,
    ) -> None:
        assert duration_s >= 0
        self.calls.append((endpoint_name, ok, snapshot, error))


@pytest.fixture
async def pods() -> AsyncIterator[list[FakePod]]:
    started = [FakePod(f"pod-{i}") for i in range(2)]
    try:
        for pod in started:
            await pod.start()
        yield started
    finally:
        for pod in started:
            await pod.stop()


@pytest.fixture(params=["aiohttp", "httpx"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[ScrapeClient]:
    """Both ways to fetch: epp's default (aiohttp) and a caller's httpx client."""
    if request.param == "httpx":
        async with httpx.AsyncClient() as c:
            yield c
        return
    fetcher = AiohttpFetcher()
    try:
        yield fetcher
    finally:
        await fetcher.close()


def make_scraper(
    ds: Datastore,
    client: ScrapeClient,
    timeout_s: float = 0.1,
    observer: RecordingObserver | None = None,
) -> Scraper:
    return Scraper(ds, client, interval_s=INTERVAL, timeout_s=timeout_s, observer=observer)


async def test_snapshots_arrive_and_observer_is_told(pods: list[FakePod], client: ScrapeClient) -> None:
    ds = Datastore(staleness_s=0.3)
    pod = pods[0]
    ds.set_endpoints([pod.endpoint])
    observer = RecordingObserver()
    scraper = make_scraper(ds, client, observer=observer)
    assert not schedulable(ds, pod.name)
    scraper.start()
    try:
        await wait_for(lambda: schedulable(ds, pod.name), "pod schedulable")
        pod.body = vllm_body(waiting=7)
        await wait_for(
            lambda: (s := ds.get(pod.name)) is not None and s.metrics is not None and s.metrics.waiting == 7,
            "new waiting count",
        )
    finally:
        await scraper.stop()
    name, ok, snapshot, error = observer.calls[0]
    assert (name, ok, error) == (pod.name, True, None)
    assert snapshot is not None and snapshot.running == 1 and snapshot.kv_cache_usage == 0.5


@pytest.mark.parametrize(
    ("mode", "expected_error"),
    [("hang", "timed out"), ("500", "HTTP 500"), ("close", "Disconnected"), ("garbage", "missing")],
)
async def test_failing_pod_unschedulable_until_it_answers(
    pods: list[FakePod],
    client: ScrapeClient,
    mode: str,
    expected_error: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_scraper.scraper")
    ds = Datastore(staleness_s=0.5)
    pod = pods[0]
    ds.set_endpoints([pod.endpoint])
    scraper = make_scraper(ds, client, timeout_s=0.25)
    scraper.start()
    try:
        await wait_for(lambda: schedulable(ds, pod.name), "pod schedulable")
        pod.mode = mode
        await wait_for(lambda: not schedulable(ds, pod.name), f"pod unschedulable in mode {mode}")
        state = ds.get(pod.name)
        assert state is not None and state.health.scrape_error is not None
        assert expected_error.lower() in state.health.scrape_error.lower()
        # A slow pod is only out once its metrics are stale (and stays a panic-mode candidate).
        expected_state = HealthState.STALE if mode == "hang" else HealthState.UNREACHABLE
        assert ds.health_state(state) is expected_state
        await wait_for(lambda: state.health.consecutive_scrape_failures >= 3, "several failed scrapes")
        pod.mode = "ok"
        await wait_for(lambda: schedulable(ds, pod.name), "pod schedulable again")
    finally:
        await scraper.stop()
    # One warning when it started failing and one info when it recovered, not one per failed scrape.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    healthy = [r for r in caplog.records if r.levelno == logging.INFO and "healthy" in r.getMessage()]
    assert len(warnings) == 1 and expected_error.lower() in warnings[0].getMessage().lower()
    assert len(healthy) == 2  # first success, then recovery


async def test_stale_snapshot_unschedulable_while_scrape_hangs(
    pods: list[FakePod], client: ScrapeClient
) -> None:
    ds = Datastore(staleness_s=0.2)
    pod = pods[0]
    ds.set_endpoints([pod.endpoint])
    scraper = make_scraper(ds, client, timeout_s=30.0)  # the scrape stays pending; only staleness applies
    scraper.start()
    try:
        await wait_for(lambda: schedulable(ds, pod.name), "pod schedulable")
        pod.mode = "hang"
        await wait_for(lambda: not schedulable(ds, pod.name), "stale pod unschedulable")
        state = ds.get(pod.name)
        assert state is not None and state.health.scrape_error is None
    finally:
        await scraper.stop()


async def test_slow_pod_neither_delays_others_nor_piles_up(pods: list[FakePod], client: ScrapeClient) -> None:
    ds = Datastore(staleness_s=0.3)
    slow, fast = pods
    slow.mode = "hang"
    ds.set_endpoints([slow.endpoint, fast.endpoint])
    scraper = make_scraper(ds, client, timeout_s=30.0)
    scraper.start()
    try:
        await wait_for(lambda: fast.requests >= 10, "ten scrapes of the fast pod")
        assert slow.requests == 1  # its one scrape is still pending; no overlapping scrapes were started
        assert schedulable(ds, fast.name) and not schedulable(ds, slow.name)
    finally:
        await scraper.stop()


async def test_endpoints_added_and_removed_at_runtime(pods: list[FakePod], client: ScrapeClient) -> None:
    ds = Datastore(staleness_s=0.3)
    a, b = pods
    ds.set_endpoints([a.endpoint])
    scraper = make_scraper(ds, client)
    scraper.start()
    try:
        await wait_for(lambda: schedulable(ds, a.name), "a schedulable")
        assert b.requests == 0
        ds.set_endpoints([a.endpoint, b.endpoint])
        await wait_for(lambda: schedulable(ds, b.name), "added endpoint b scraped")
        ds.set_endpoints([a.endpoint])
        seen = a.requests
        await wait_for(lambda: a.requests >= seen + 3, "a scraped after b's removal")
        b_after_removal = b.requests
        seen = a.requests
        await wait_for(lambda: a.requests >= seen + 5, "a scraped five more times")
        assert b.requests == b_after_removal
    finally:
        await scraper.stop()


async def test_restart_reaches_datastore_listeners(pods: list[FakePod], client: ScrapeClient) -> None:
    ds = Datastore(staleness_s=0.3)
    events: list[tuple[EndpointEvent, str]] = []
    ds.subscribe(lambda event, endpoint: events.append((event, endpoint.name)))
    pod = pods[0]
    ds.set_endpoints([pod.endpoint])
    scraper = make_scraper(ds, client)
    scraper.start()
    try:
        await wait_for(lambda: schedulable(ds, pod.name), "pod schedulable")
        assert (EndpointEvent.RESTARTED, pod.name) not in events
        pod.body = vllm_body(start=200.0)
        await wait_for(lambda: (EndpointEvent.RESTARTED, pod.name) in events, "restart event")
    finally:
        await scraper.stop()
    assert events.count((EndpointEvent.RESTARTED, pod.name)) == 1


async def test_scrape_once_reports_each_endpoint(pods: list[FakePod], client: ScrapeClient) -> None:
    ds = Datastore()
    ok_pod, bad_pod = pods
    bad_pod.mode = "500"
    ds.set_endpoints([ok_pod.endpoint, bad_pod.endpoint])
    results = await make_scraper(ds, client).scrape_once()
    assert results == {ok_pod.name: True, bad_pod.name: False}
    assert schedulable(ds, ok_pod.name) and not schedulable(ds, bad_pod.name)


async def test_stop_cancels_everything(pods: list[FakePod], client: ScrapeClient) -> None:
    ds = Datastore()
    ds.set_endpoints([p.endpoint for p in pods])
    scraper = make_scraper(ds, client)
    scraper.start()
    await wait_for(lambda: all(p.requests > 0 for p in pods), "both pods scraped")
    await scraper.stop()
    counts = [p.requests for p in pods]
    await asyncio.sleep(INTERVAL * 5)
    assert [p.requests for p in pods] == counts
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("scrape-")] == []


async def test_unchanged_body_gives_fresh_snapshot_and_changed_body_new_values(
    pods: list[FakePod], client: ScrapeClient
) -> None:
    pod = pods[0]
    ds = Datastore()
    ds.set_endpoints([pod.endpoint])
    scraper = make_scraper(ds, client)
    assert await scraper.scrape_once() == {pod.name: True}
    first = snapshot_of(ds, pod.name)
    assert await scraper.scrape_once() == {pod.name: True}
    again = snapshot_of(ds, pod.name)
    assert first is not None and again is not None
    assert again.scraped_at > first.scraped_at  # the same body still counts as a fresh scrape
    assert (again.waiting, again.running, again.process_start_time) == (0, 1, 100.0)
    pod.body = vllm_body(waiting=7)
    assert await scraper.scrape_once() == {pod.name: True}
    changed = snapshot_of(ds, pod.name)
    assert changed is not None and changed.waiting == 7
    pod.mode = "garbage"
    assert await scraper.scrape_once() == {pod.name: False}
    pod.mode = "ok"
    assert await scraper.scrape_once() == {pod.name: True}
    recovered = snapshot_of(ds, pod.name)
    assert recovered is not None and recovered.waiting == 7 and schedulable(ds, pod.name)


async def test_aiohttp_fetcher_reports_a_refused_connection() -> None:
    probe = FakePod("gone")
    await probe.start()
    await probe.stop()  # the port now refuses connections
    fetcher = AiohttpFetcher()
    try:
        with pytest.raises(FetchError, match="ClientConnectorError"):
            await fetcher.get(f"{probe.endpoint.base_url}/metrics")
    finally:
        await fetcher.close()
