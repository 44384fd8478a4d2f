"""Adaptive scraping: idle pods are scraped seldom, a send wakes the scraper, and epp's own accounting bridges
the gap between scrapes (epp.datastore.bridged), so decisions between two scrapes still see a burst."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from bench.sim.fleet import SimFleet
from epp.config import RoutingStrategy, builtin_strategy
from epp.core import PickerCore, PickerOptions, load_pool
from epp.datastore import Datastore, Endpoint, MetricsSnapshot, bridged
from epp.scheduling.builder import build_scheduler
from epp.scheduling.types import LLMRequest
from metrics_scraper import Scraper
from metrics_scraper.scraper import DEFAULT_IDLE_INTERVAL_S, DEFAULT_INTERVAL_S, min_staleness_s
from scorers.builtin import default_registry
from tests.test_scraper_loop import FakePod, vllm_body, wait_for
from tests.test_sim_support import prompt


def idle_body() -> str:
    return vllm_body(waiting=0).replace(
        'num_requests_running{engine="0"} 1', 'num_requests_running{engine="0"} 0'
    )


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


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as c:
        yield c


# -- the bridge --------------------------------------------------------------------------------------------
def snap(waiting: int, running: int) -> MetricsSnapshot:
    return MetricsSnapshot(waiting=waiting, running=running, kv_cache_usage=0.1, scraped_at=1.0)


def test_sends_run_on_a_pod_that_does_not_queue_and_queue_on_one_that_does() -> None:
    assert (bridged(snap(0, 2), 3).waiting, bridged(snap(0, 2), 3).running) == (0, 5)
    assert (bridged(snap(2, 4), 3).waiting, bridged(snap(2, 4), 3).running) == (5, 4)


def test_finishes_leave_the_queue_first_and_never_go_below_zero() -> None:
    assert (bridged(snap(2, 4), -3).waiting, bridged(snap(2, 4), -3).running) == (0, 3)
    assert (bridged(snap(0, 1), -5).waiting, bridged(snap(0, 1), -5).running) == (0, 0)
    assert bridged(snap(1, 1), 0) == snap(1, 1)


def test_datastore_bridges_sends_until_the_next_scrape_replaces_them() -> None:
    ds = Datastore()
    ds.set_endpoints([Endpoint("a", "127.0.0.1", 1)])
    ds.update_metrics("a", snap(1, 4))
    state = ds.get("a")
    assert state is not None
    ds.acquire("a")
    ds.acquire("a")
    assert state.metrics is not None and state.metrics.waiting == 3 and state.scraped == snap(1, 4)
    ds.release("a")
    assert state.metrics.waiting == 2
    ds.update_metrics("a", snap(0, 4))  # the pod has epp's remaining request running now
    assert state.metrics == snap(0, 4)
    ds.release("a")  # it finishes: one fewer than that scrape saw
    assert (state.metrics.waiting, state.metrics.running) == (0, 3)


# -- the cadence -------------------------------------------------------------------------------------------
async def test_idle_pod_is_scraped_far_less_often_than_a_busy_one(
    pods: list[FakePod], client: httpx.AsyncClient
) -> None:
    idle, busy = pods
    idle.body = idle_body()
    ds = Datastore(staleness_s=5.0)
    ds.set_endpoints([idle.endpoint, busy.endpoint])
    scraper = Scraper(ds, client, interval_s=0.02, timeout_s=1.0, idle_interval_s=0.5)
    scraper.start()
    try:
        await wait_for(lambda: busy.requests >= 40, "40 scrapes of the busy pod")
    finally:
        await scraper.stop()
    assert scraper.is_busy(busy.name) and not scraper.is_busy(idle.name)
    # 0.02 s against 0.5 s: 25 times fewer; a loaded machine slows the busy cadence, hence the margin.
    assert 1 <= idle.requests <= busy.requests / 4


async def test_a_send_to_an_idle_pod_brings_its_next_scrape_forward(
    pods: list[FakePod], client: httpx.AsyncClient
) -> None:
    pod = pods[0]
    pod.body = idle_body()
    ds = Datastore(staleness_s=600.0)
    ds.set_endpoints([pod.endpoint])
    scraper = Scraper(ds, client, interval_s=0.05, timeout_s=1.0, idle_interval_s=300.0)
    scraper.start()
    try:
        await wait_for(lambda: pod.requests == 1, "the first scrape")
        await asyncio.sleep(0.2)
        assert pod.requests == 1  # idle: the next one is 300 s away
        pod.body = vllm_body(waiting=0)  # the request runs
        ds.acquire(pod.name)
        await wait_for(lambda: pod.requests >= 3, "scrapes at the busy cadence after the send")
    finally:
        await scraper.stop()


def test_fixed_cadence_and_defaults() -> None:
    ds = Datastore()
    fixed = Scraper(ds, httpx.AsyncClient(), interval_s=0.05, idle_interval_s=0.05)
    assert fixed.idle_interval_s == fixed.interval_s == 0.05
    assert Scraper(ds, httpx.AsyncClient(), interval_s=0.3, idle_interval_s=0.1).idle_interval_s == 0.3
    default = Scraper(ds, httpx.AsyncClient())
    assert (default.interval_s, default.idle_interval_s) == (DEFAULT_INTERVAL_S, DEFAULT_IDLE_INTERVAL_S)
    # The default staleness bound (1 s) already covers an idle pod at the default timeout.
    assert min_staleness_s(DEFAULT_IDLE_INTERVAL_S, 0.5) <= PickerOptions().staleness_s


async def test_staleness_bound_is_raised_to_cover_the_idle_interval(caplog: pytest.LogCaptureFixture) -> None:
    options = PickerOptions(endpoints="127.0.0.1:9")
    config, endpoints = load_pool(options, {})
    core = PickerCore(config, endpoints, staleness_s=0.3, seed=0)
    core.start_scraping(0.05, 0.2, idle_interval_s=2.0)
    try:
        assert core.datastore.staleness_s == pytest.approx(2.2)
        assert "staleness bound raised from 0.3s to 2.2s" in caplog.text
    finally:
        await core.stop_scraping()


# -- decisions over the simulator ----------------------------------------------------------------------------
async def test_a_burst_onto_one_pod_is_seen_before_the_next_scrape(client: httpx.AsyncClient) -> None:
    """Both pods queue (scraped); a burst of one shared prompt follows prefix affinity onto one of them. No
    scrape lands inside the burst, yet the bridged queue makes that pod saturated after a few sends and the
    next picks go to the other pod; on scraped counts alone all of them would pile onto the first."""
    async with SimFleet(pods=2, profile="tiny", time_scale=0.02, log_level="critical") as fleet:
        ds = Datastore(staleness_s=600.0)
        ds.set_endpoints([Endpoint(f"pod-{i}", e.host, e.port) for i, e in enumerate(fleet.endpoints)])
        scraper = Scraper(ds, client, timeout_s=10.0)  # not started: scrape_once alone, so none mid-burst
        body = {"model": "sim/tiny", "max_tokens": 100}
        load = [
            asyncio.create_task(client.post(f"{url}/v1/completions", json={**body, "prompt": f"load {i}"}))
            for url in fleet.urls
            for i in range(6)  # 4 run (max_num_seqs), 2 wait
        ]
        try:

            async def both_queue() -> bool:
                await scraper.scrape_once()
                return all(s.scraped is not None and 1 <= s.scraped.waiting < 5 for s in ds.states())

            for _ in range(200):
                if await both_queue():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the pods never both ran and queued")
            waiting = {s.endpoint.name: s.scraped.waiting for s in ds.states() if s.scraped is not None}
            assert max(waiting.values()) < 5  # neither is saturated on its scrape

            scheduler = build_scheduler(
                builtin_strategy(RoutingStrategy.PREFIX_CACHE), ds, default_registry(), random.Random(0)
            )
            text = prompt(7, words=200)
            picks = []
            for i in range(8):
                result = scheduler.schedule(LLMRequest(f"r{i}", "sim/tiny", "sim/tiny", text))
                ds.acquire(result.endpoint.name)  # as the director does when it sends
                for hook in scheduler.profile().pre_requests:
                    hook.pre_request(result.context, result.endpoint)
                picks.append(result.endpoint.name)
        finally:
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
    first = picks[0]
    other = next(name for name in waiting if name != first)
    assert other in picks, picks
    # Affinity held until the first pod's scraped queue plus epp's sends reached the threshold (5).
    assert picks.index(other) <= 5 - waiting[first], (picks, waiting)
