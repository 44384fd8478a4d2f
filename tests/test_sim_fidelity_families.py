"""The simulator's /metrics against the real vLLM 0.32 scrape: family set, types, label keys and buckets.

The pod runs the `cpu-tiny` profile (the fixture's server: CPU build, block 128, max_model_len 512), so even
the size histograms' buckets must be the real ones.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.sim.fleet import SimFleet

FIXTURE = Path(__file__).parent / "fixtures" / "vllm" / "vllm-0.32-metrics.txt"
# Families of the real scrape the simulator leaves out, and why (docs/simulator.md repeats this):
# the Python process / GC / HTTP-middleware families say nothing about the engine; FLOPs estimates, the
# multi-modal cache and admission limits are not modelled.
NOT_SIMULATED_PREFIXES = ("python_", "process_", "http_")
NOT_SIMULATED = {
    "vllm:estimated_flops_per_gpu",
    "vllm:estimated_read_bytes_per_gpu",
    "vllm:estimated_write_bytes_per_gpu",
    "vllm:mm_cache_queries",
    "vllm:mm_cache_hits",
    "vllm:admission_rejections",
    "vllm:iteration_tokens_total",
    "vllm:request_max_num_generation_tokens",
    "vllm:request_params_n",
    "vllm:request_params_max_tokens",
    "vllm:request_time_per_output_token_seconds",
    "vllm:request_num_preemptions",
    "vllm:request_prefill_kv_computed_tokens",
}


def _families(text: str) -> dict[str, tuple[str, frozenset[frozenset[str]], tuple[float, ...]]]:
    """name -> (type, label-key sets, bucket bounds) of every family, `_created` gauges included."""
    out = {}
    for f in text_string_to_metric_families(text):
        keys = frozenset(frozenset(s.labels) - {"le"} for s in f.samples)
        bounds = tuple(float(s.labels["le"]) for s in f.samples if s.name.endswith("_bucket"))
        out[f.name] = (f.type, keys, bounds)
    return out


def _not_simulated(name: str) -> bool:
    if name == "process_start_time_seconds":
        return False
    base = name.removesuffix("_created")
    return name.startswith(NOT_SIMULATED_PREFIXES) or base in NOT_SIMULATED


async def _sim_exposition() -> str:
    async with (
        SimFleet(pods=1, profile="cpu-tiny", served_model_name="tiny-llama") as fleet,
        httpx.AsyncClient(trust_env=False, timeout=30) as client,
    ):
        url = fleet.urls[0]
        for _ in range(2):
            r = await client.post(f"{url}/v1/completions", json={"prompt": "hello " * 200, "max_tokens": 4})
            assert r.status_code == 200
        return (await client.get(f"{url}/metrics")).text


async def test_family_set_types_label_keys_and_buckets_equal_the_real_scrape() -> None:
    real = _families(FIXTURE.read_text())
    sim = _families(await _sim_exposition())
    expected = {name: spec for name, spec in real.items() if not _not_simulated(name)}
    assert set(sim) - set(real) == set()  # nothing vLLM does not expose
    assert set(expected) - set(sim) == set()  # everything it does, bar the documented exceptions
    for name, (kind, keys, bounds) in expected.items():
        assert sim[name][0] == kind, name
        assert sim[name][1] == keys, name
        assert sim[name][2] == bounds, name


async def test_counters_have_created_samples_and_cached_prompt_tokens_count_hits() -> None:
    text = await _sim_exposition()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    base = (("engine", "0"), ("model_name", "tiny-llama"))
    hits = samples[("vllm:prefix_cache_hits_total", base)]
    assert hits == 128  # 201 prompt tokens sent twice: one full 128-token block hit, as on the real pod
    assert samples[("vllm:prompt_tokens_cached_total", base)] == hits
    local = tuple(sorted((*base, ("source", "local_cache_hit"))))
    assert samples[("vllm:prompt_tokens_by_source_total", local)] == hits
    start = samples[("process_start_time_seconds", ())]
    for counter in ("vllm:prompt_tokens", "vllm:prefix_cache_queries", "vllm:external_prefix_cache_hits"):
        assert samples[(f"{counter}_created", base)] == start
