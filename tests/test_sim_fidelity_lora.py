"""vllm:lora_requests_info as vLLM 0.32 exposes it (fixtures metrics-lora-fresh.txt / -after-traffic.txt)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.sim.fleet import SimFleet
from tests.test_sim_support import prompt, scrape

FIXTURES = Path(__file__).parent / "fixtures" / "vllm"
INFO = "vllm:lora_requests_info"
ADAPTER = "tiny-lora"
DEFERRED = "vllm:num_requests_waiting_by_reason{reason=deferred}"


def _info_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if INFO in line]


def _series(text: str) -> dict[tuple[str, str, str], float]:
    """(max_lora, running, waiting) -> value of every lora_requests_info series."""
    for family in text_string_to_metric_families(text):
        if family.name == INFO:
            return {
                (
                    s.labels["max_lora"],
                    s.labels["running_lora_adapters"],
                    s.labels["waiting_lora_adapters"],
                ): (s.value)
                for s in family.samples
            }
    raise AssertionError(f"{INFO} not exposed")


async def test_family_without_sample_before_the_first_request_like_a_fresh_pod() -> None:
    real = _info_lines((FIXTURES / "vllm-0.32" / "metrics-lora-fresh.txt").read_text())
    fleet = SimFleet(pods=1, profile="cpu-tiny", lora_modules=(ADAPTER,))
    async with fleet, httpx.AsyncClient(trust_env=False) as client:
        sim = _info_lines((await client.get(f"{fleet.urls[0]}/metrics")).text)
    assert (
        sim
        == real
        == [
            f"# HELP {INFO} Running stats on lora requests.",
            f"# TYPE {INFO} gauge",
        ]
    )


async def test_enable_lora_without_adapters_exposes_the_family() -> None:
    fleet = SimFleet(pods=1, profile="tiny", enable_lora=True)
    async with fleet, httpx.AsyncClient(trust_env=False) as client:
        assert len(_info_lines((await client.get(f"{fleet.urls[0]}/metrics")).text)) == 2


async def test_omitted_without_lora_like_the_plain_scrape() -> None:
    assert _info_lines((FIXTURES / "vllm-0.32-metrics.txt").read_text()) == []
    async with SimFleet(pods=1, profile="tiny") as fleet, httpx.AsyncClient(trust_env=False) as client:
        url = fleet.urls[0]
        await client.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert _info_lines((await client.get(f"{url}/metrics")).text) == []


async def test_one_series_per_state_valued_at_its_time_and_both_running_and_waiting() -> None:
    real = _series((FIXTURES / "vllm-0.32" / "metrics-lora-after-traffic.txt").read_text())
    assert ("1", ADAPTER, ADAPTER) in real and ("1", "", "") in real
    assert real[("1", "", "")] > real[("1", ADAPTER, ADAPTER)]  # the idle state came last
    async with (
        SimFleet(pods=1, profile="tiny", lora_modules=(ADAPTER,), max_loras=1) as fleet,
        httpx.AsyncClient(trust_env=False, timeout=30) as client,
    ):
        url = fleet.urls[0]
        body = {"model": ADAPTER, "max_tokens": 20}
        # Six requests on a pod with max_num_seqs 4: the adapter is both running and waiting.
        jobs = [client.post(f"{url}/v1/completions", json=body | {"prompt": prompt(i, 30)}) for i in range(6)]
        assert all(r.status_code == 200 for r in await asyncio.gather(*jobs))
        first = _series((await client.get(f"{url}/metrics")).text)
        await asyncio.sleep(0.01)
        second = _series((await client.get(f"{url}/metrics")).text)
    assert ("1", ADAPTER, ADAPTER) in first and ("1", "", "") in first
    assert first[("1", "", "")] == max(first.values())  # the idle state after the last step came last
    assert all(value > 1e9 for value in first.values())  # timestamps, as vLLM reports them
    assert second == first  # valued at the time of the change, not of the scrape
    assert {len(key) for key in first} == {len(key) for key in real}


async def test_requests_held_back_by_the_lora_budget_wait_as_deferred() -> None:
    adapters = ("a-one", "a-two")
    fleet = SimFleet(pods=1, profile="tiny", lora_modules=adapters, max_loras=1)
    async with fleet, httpx.AsyncClient(trust_env=False, timeout=30) as client:
        url = fleet.urls[0]
        jobs = [
            asyncio.create_task(
                client.post(
                    f"{url}/v1/completions", json={"model": name, "prompt": prompt(i, 20), "max_tokens": 30}
                )
            )
            for i, name in enumerate(adapters)
        ]
        seen = []
        while not all(j.done() for j in jobs):
            m = await scrape(client, url)
            by_reason = (m["vllm:num_requests_waiting_by_reason{reason=capacity}"], m[DEFERRED])
            assert sum(by_reason) == m["vllm:num_requests_waiting"]
            seen.append(by_reason[1])
            await asyncio.sleep(0.002)
        await asyncio.gather(*jobs)
    assert max(seen) == 1  # the second adapter waits for the first one's batch to drain
