"""The simulator's /metrics against the real vLLM 0.32 scrape, LoRA info and restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.sim.fleet import SimFleet
from tests.test_sim_support import prompt, scrape

FIXTURE = Path(__file__).parent / "fixtures" / "vllm" / "vllm-0.32-metrics.txt"  # from shared/fixtures
ROUTER_METRICS = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:cache_config_info": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "process_start_time_seconds": "gauge",
}


def _families(text: str) -> dict[str, tuple[str, set[frozenset[str]], list[float]]]:
    """name -> (type, label-key sets of the main samples, bucket bounds)."""
    out = {}
    for f in text_string_to_metric_families(text):
        keys = {frozenset(s.labels) - {"le"} for s in f.samples if not s.name.endswith("_created")}
        bounds = [float(s.labels["le"]) for s in f.samples if s.name.endswith("_bucket")]
        out[f.name] = (f.type, keys, bounds)
    return out


@pytest.fixture
def fixture_families():
    return _families(FIXTURE.read_text())


async def test_metric_names_types_and_label_keys_match_real_vllm(fixture_families):
    async with SimFleet(pods=1, profile="tiny") as fleet, httpx.AsyncClient() as client:
        await client.post(f"{fleet.urls[0]}/v1/completions", json={"prompt": prompt(1, 50), "max_tokens": 3})
        sim = _families((await client.get(f"{fleet.urls[0]}/metrics")).text)
    for name, kind in ROUTER_METRICS.items():
        assert fixture_families[name][0] == kind, name
        assert sim[name][0] == kind, name
        assert sim[name][1] == fixture_families[name][1], name
    for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        assert sim[name][2] == fixture_families[name][2]
    # The fixture's server had max_model_len 512, so its 1-2-5 prompt buckets stop earlier.
    fixture_bounds = fixture_families["vllm:request_prompt_tokens"][2]
    assert sim["vllm:request_prompt_tokens"][2][: len(fixture_bounds) - 1] == fixture_bounds[:-1]
    assert "vllm:lora_requests_info" not in sim  # LoRA is off, as in the fixture's server


async def test_counters_count_tokens_like_vllm():
    async with SimFleet(pods=1, profile="tiny") as fleet, httpx.AsyncClient() as client:
        url = fleet.urls[0]
        r = await client.post(f"{url}/v1/completions", json={"prompt": prompt(2, 100), "max_tokens": 4})
        n = r.json()["usage"]["prompt_tokens"]
        await client.post(f"{url}/v1/completions", json={"prompt": prompt(2, 100), "max_tokens": 4})
        m = await scrape(client, url)
    assert m["vllm:prefix_cache_queries_total"] == 2 * n
    assert m["vllm:prefix_cache_hits_total"] == (n - 1) // 16 * 16
    assert m["vllm:prompt_tokens_total"] == 2 * n
    assert m["vllm:generation_tokens_total"] == 8
    assert m["vllm:request_prompt_tokens_count"] == 2 and m["vllm:request_prompt_tokens_sum"] == 2 * n
    assert m["vllm:e2e_request_latency_seconds_count"] == 2


async def test_lora_adapters_run_show_in_info_and_respect_max_loras():
    adapters = ("travel-helper-v1", "travel-helper-v2")
    async with (
        SimFleet(pods=1, profile="tiny", lora_modules=adapters, max_loras=1) as fleet,
        httpx.AsyncClient(timeout=30) as client,
    ):
        url = fleet.urls[0]
        jobs = [
            asyncio.create_task(
                client.post(
                    f"{url}/v1/completions", json={"model": name, "prompt": prompt(i, 30), "max_tokens": 40}
                )
            )
            for i, name in enumerate(adapters * 2)
        ]
        seen: set[tuple[str, str]] = set()
        while not all(j.done() for j in jobs):
            r = await client.get(f"{url}/metrics")
            for family in text_string_to_metric_families(r.text):
                if family.name == "vllm:lora_requests_info" and family.samples:
                    latest = max(family.samples, key=lambda sample: sample.value)  # the current series
                    labels = latest.labels
                    assert labels["max_lora"] == "1"
                    assert latest.value > 1e9  # a timestamp, as vLLM reports it
                    seen.add((labels["running_lora_adapters"], labels["waiting_lora_adapters"]))
            await asyncio.sleep(0.005)
        responses = [j.result() for j in jobs]
    assert all(r.status_code == 200 and r.json()["model"] in adapters for r in responses)
    running = {run for run, _ in seen if run}
    assert running <= set(adapters)  # never two adapters in one batch with max_loras=1
    assert ("travel-helper-v1", "travel-helper-v2") in seen or (
        "travel-helper-v2",
        "travel-helper-v1",
    ) in seen


async def test_restart_resets_state_and_start_time():
    async with SimFleet(pods=1, profile="tiny") as fleet, httpx.AsyncClient() as client:
        url = fleet.urls[0]
        await client.post(f"{url}/v1/completions", json={"prompt": prompt(3, 100), "max_tokens": 2})
        before = await scrape(client, url)
        await asyncio.sleep(0.01)
        state = (await client.post(f"{url}/sim/restart")).json()
        after = await scrape(client, url)
    assert state["kv"]["cached_blocks"] == 0
    assert after["process_start_time_seconds"] > before["process_start_time_seconds"]
    assert before["vllm:prompt_tokens_total"] > 0 and after["vllm:prompt_tokens_total"] == 0
