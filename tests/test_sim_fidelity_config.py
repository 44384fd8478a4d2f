"""--block-size / --max-model-len and the `cpu-tiny` profile (vLLM 0.32's CPU build)."""

from __future__ import annotations

import httpx
import pytest

from bench.sim.fleet import SimFleet
from bench.sim.process import SimProcess
from bench.sim.profiles import get_profile, with_overrides
from tests.test_sim_support import scrape


def test_overrides_keep_the_cache_size_in_tokens():
    tiny = get_profile("tiny")
    p = with_overrides(tiny, block_size=128, max_model_len=512)
    assert (p.block_size, p.max_model_len, p.kv_cache_tokens) == (128, 512, tiny.kv_cache_tokens)
    assert with_overrides(tiny) == tiny
    with pytest.raises(ValueError):
        with_overrides(tiny, block_size=0)


def test_cpu_tiny_matches_the_real_cpu_pod():
    p = get_profile("cpu-tiny")
    assert (p.block_size, p.num_gpu_blocks, p.max_model_len, p.kv_cache_tokens) == (128, 4096, 512, 524288)


async def test_same_256_ids_twice_hit_128_tokens_at_block_128_like_vllm_cpu():
    ids = [(i * 7919) % 30000 for i in range(256)]
    async with SimFleet(pods=1, profile="tiny", block_size=128) as fleet, httpx.AsyncClient() as client:
        url = fleet.urls[0]
        hits = []
        for _ in range(2):
            before = await scrape(client, url)
            r = await client.post(f"{url}/v1/completions", json={"prompt": ids, "max_tokens": 1})
            assert r.status_code == 200
            hits.append(
                (await scrape(client, url))["vllm:prefix_cache_hits_total"]
                - before.get("vllm:prefix_cache_hits_total", 0)
            )
        text = (await client.get(f"{url}/metrics")).text
    assert hits == [0, 128]  # the real pod's figures (issue 14); block 16 gave 0 then 240
    assert 'block_size="128"' in text


@pytest.mark.slow
def test_cli_flags_reach_the_pod():
    args = ["--base-port", "0", "--profile", "tiny", "--block-size", "32", "--max-model-len", "100"]
    with SimProcess(args) as sim, httpx.Client(timeout=10) as client:
        (url,) = sim.urls
        text = client.get(f"{url}/metrics").text
        assert 'block_size="32"' in text and "lora_requests_info" not in text
        models = client.get(f"{url}/v1/models").json()["data"]
        assert models[0]["max_model_len"] == 100
        r = client.post(f"{url}/v1/completions", json={"prompt": list(range(90)), "max_tokens": 50})
        assert r.json()["usage"]["completion_tokens"] == 10


@pytest.mark.slow
def test_cli_enable_lora_exposes_lora_info_without_adapters():
    args = ["--base-port", "0", "--profile", "tiny", "--enable-lora"]
    with SimProcess(args) as sim, httpx.Client(timeout=10) as client:
        assert "# TYPE vllm:lora_requests_info gauge" in client.get(f"{sim.urls[0]}/metrics").text
