"""The scraper against running simulated vLLM pods over loopback HTTP, feeding the prefix index."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from bench.sim.fleet import SimFleet
from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.scheduling.plugins import PluginDeps
from epp.scheduling.types import Candidate, LLMRequest, SchedulingContext
from metrics_scraper import Scraper
from scorers.prefix_cache_scorer import PrefixCacheScorer, factory
from tests.test_scraper_loop import schedulable, wait_for
from tests.test_sim_support import prompt

ADAPTER = "sql-lora"


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(
        pods=2, profile="tiny", lora_modules=(ADAPTER,), max_loras=1, log_level="critical"
    ) as f:
        yield f


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as c:
        yield c


def endpoints(fleet: SimFleet) -> list[Endpoint]:
    return [Endpoint(f"pod-{i}", e.host, e.port) for i, e in enumerate(fleet.endpoints)]


def metrics(ds: Datastore, name: str) -> MetricsSnapshot | None:
    state = ds.get(name)
    return None if state is None else state.metrics


async def test_default_cadence_is_250_ms_busy_500_ms_idle(client: httpx.AsyncClient) -> None:
    scraper = Scraper(Datastore(), client)
    assert (scraper.interval_s, scraper.idle_interval_s) == (0.25, 0.5)


async def test_snapshot_of_a_simulated_pod_follows_its_load_and_lora(
    fleet: SimFleet, client: httpx.AsyncClient
) -> None:
    ds = Datastore(staleness_s=1.0)
    ds.set_endpoints(endpoints(fleet))
    scraper = Scraper(ds, client, interval_s=0.02)
    scraper.start()
    try:
        await wait_for(lambda: all(schedulable(ds, e.name) for e in ds.endpoints()), "pods scraped")
        idle = metrics(ds, "pod-0")
        assert idle is not None
        assert (idle.waiting, idle.running, idle.kv_cache_usage) == (0, 0, 0.0)
        # vLLM (and the simulator) report no LoRA sample before the first request
        assert (idle.block_size, idle.num_gpu_blocks, idle.max_lora) == (16, 64, None)
        assert idle.process_start_time is not None and idle.running_loras == frozenset()

        url = fleet.urls[0]
        jobs = [
            asyncio.create_task(
                client.post(
                    f"{url}/v1/completions",
                    json={"model": ADAPTER, "prompt": prompt(i, 40), "max_tokens": 400},
                )
            )
            for i in range(6)
        ]

        def busy() -> bool:
            m = metrics(ds, "pod-0")
            return m is not None and m.running == 4 and m.waiting == 2 and m.kv_cache_usage > 0

        await wait_for(busy, "running 4 (max_num_seqs) and waiting 2 on pod-0")
        loaded = metrics(ds, "pod-0")
        assert loaded is not None and loaded.running_loras == frozenset({ADAPTER}) and loaded.max_lora == 1
        other = metrics(ds, "pod-1")
        assert other is not None and other.running == 0  # pods are scraped separately
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

        def drained() -> bool:
            m = metrics(ds, "pod-0")
            return m is not None and m.running == 0 and m.waiting == 0 and m.kv_cache_usage == 0.0

        await wait_for(drained, "pod-0 idle again after the clients left")
    finally:
        await scraper.stop()


async def test_restart_and_departure_make_the_prefix_index_forget(
    fleet: SimFleet, client: httpx.AsyncClient
) -> None:
    ds = Datastore(staleness_s=1.0)
    ds.set_endpoints(endpoints(fleet))
    scorer = factory("prefix-cache-scorer", {}, PluginDeps(ds))
    assert isinstance(scorer, PrefixCacheScorer)
    scraper = Scraper(ds, client, interval_s=0.02)
    scraper.start()
    try:
        await wait_for(lambda: all(schedulable(ds, e.name) for e in ds.endpoints()), "pods scraped")
        text = prompt(5, 200)
        for state in ds.states():
            assert state.metrics is not None
            ctx = SchedulingContext(LLMRequest(f"r-{state.endpoint.name}", "m", "m", text))
            candidate = Candidate(state.endpoint, state.metrics, 0)
            scorer.score(ctx, [candidate])  # sizes the pod's LRU from its scraped KV capacity
            scorer.pre_request(ctx, state.endpoint)
        # Sized from the scraped cache_config_info: 64 blocks x 16 tokens x 4 chars / 64-char blocks.
        assert scorer.index.capacity("pod-0") == 64
        assert scorer.index.size("pod-0") == scorer.index.size("pod-1") > 0

        assert (await client.post(f"{fleet.urls[0]}/sim/restart")).status_code == 200
        await wait_for(lambda: scorer.index.size("pod-0") == 0, "pod-0's entries forgotten after restart")
        assert scorer.index.size("pod-1") > 0

        ds.set_endpoints([e for e in ds.endpoints() if e.name != "pod-1"])
        assert scorer.index.size("pod-1") == 0
        assert scorer.index.pods() == []
    finally:
        await scraper.stop()


async def test_pod_that_stops_answering_metrics_is_unschedulable_until_it_answers(
    fleet: SimFleet, client: httpx.AsyncClient
) -> None:
    ds = Datastore(staleness_s=0.3)
    ds.set_endpoints(endpoints(fleet))
    # A scrape timeout longer than the staleness bound: a hung /metrics is caught by staleness alone. A fixed
    # cadence: an idle pod scraped every 0.5 s (the default) would outlive this bound (epp.core raises it).
    scraper = Scraper(ds, client, interval_s=0.02, timeout_s=10.0, idle_interval_s=0.02)
    scraper.start()
    try:
        await wait_for(lambda: all(schedulable(ds, e.name) for e in ds.endpoints()), "pods scraped")
        for mode in ("metrics_down", "metrics_hang"):
            fleet.pods[0].fault.set(mode)
            await wait_for(lambda: not schedulable(ds, "pod-0"), f"pod-0 unschedulable ({mode})")
            assert schedulable(ds, "pod-1")
            fleet.pods[0].fault.clear()
            await wait_for(lambda: schedulable(ds, "pod-0"), f"pod-0 schedulable again after {mode}")
    finally:
        await scraper.stop()
