"""PREFIX_TOKENS over real simulator pods and the real gateway: a hot shared prefix spreads over the pods
instead of piling onto the one that saw it first, and the prefill-rate estimate converges on a real pod."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest

from bench.compare.frontends import GatewayProcess
from bench.prefill_convergence import measure
from bench.sim.process import SimProcess

# Routing results and learned rates: they want the machine to themselves (Makefile, unit).
pytestmark = pytest.mark.serial

SHARED = "You are a support agent for a large telecom company. Follow the policy below. " * 100  # ~8K chars
# Each user pastes their own ~500-token bill: the part no pod has cached, which makes piling hurt.
DOCUMENT = "Line {i}: roaming charge, data add-on, international minutes, late fee, device plan. " * 24
PODS = 4


async def one_request(client: httpx.AsyncClient, url: str, i: int) -> tuple[str, float]:
    body = {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "messages": [
            {"role": "system", "content": SHARED},
            {
                "role": "user",
                "content": f"user {i}: my bill for month {i} looks wrong. " + DOCUMENT.format(i=i),
            },
        ],
        "max_tokens": 4,
        "stream": True,
    }
    loop = asyncio.get_running_loop()
    started = loop.time()
    ttft = -1.0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        pod = response.headers["x-epp-endpoint"]
        async for line in response.aiter_lines():
            if ttft < 0 and line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                chunk = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    ttft = loop.time() - started
    return pod, ttft


async def burst(url: str, first: int, n: int) -> list[tuple[str, float]]:
    """Users first..first+n-1 send their first request at once."""
    async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
        return list(await asyncio.gather(*(one_request(client, url, i) for i in range(first, first + n))))


def run_burst(strategy: str, n: int, rounds: int) -> tuple[Counter[str], list[float]]:
    sim_args = ["--pods", str(PODS), "--base-port", "0", "--profile", "qwen2.5-7b-a10", "--time-scale", "1"]
    with SimProcess(sim_args) as sim:
        endpoints = ",".join(u.removeprefix("http://") for u in sim.urls)
        args = ["--endpoints", endpoints, "--strategy", strategy, "--seed", "1", "--log-level", "WARNING"]
        with GatewayProcess(args) as gateway:
            picks: Counter[str] = Counter()
            ttfts: list[float] = []
            for r in range(rounds):
                for pod, ttft in asyncio.run(burst(gateway.base_url, r * n, n)):
                    picks[pod] += 1
                    ttfts.append(ttft)
            return picks, ttfts


@pytest.mark.slow
def test_a_hot_shared_prefix_does_not_pile_onto_one_pod_while_others_idle() -> None:
    # 3 bursts of 24 concurrent new users sharing a ~2,000-token system prompt, each with ~500 tokens of
    # their own, on 4 idle A10 pods (simulated in real time). PREFIX_CACHE sends every one to the pod that
    # saw the prompt first (no pod looks saturated before the next scrape).
    picks, ttfts = run_burst("PREFIX_TOKENS", 24, 3)
    old_picks, old_ttfts = run_burst("PREFIX_CACHE", 24, 3)
    print(f"PREFIX_TOKENS picks {dict(picks)}, PREFIX_CACHE picks {dict(old_picks)}")
    mean, old_mean = sum(ttfts) / len(ttfts), sum(old_ttfts) / len(old_ttfts)
    print(f"mean TTFT PREFIX_TOKENS {mean:.3f}s PREFIX_CACHE {old_mean:.3f}s")
    assert all(t > 0 for t in ttfts)
    assert mean < old_mean  # direction only (measured ~0.6 s against ~1.0 s)
    assert len(picks) == PODS, picks  # no pod idles
    assert max(picks.values()) <= 0.5 * sum(picks.values()), picks


@pytest.mark.slow
def test_prefill_rate_estimate_converges_on_a_simulated_pod() -> None:
    result = measure("qwen2.5-7b-a10", time_scale=5.0, requests=25, seed=1)
    at = result.converged_at(result.effective_rate)
    assert at is not None and at <= 15, result.estimates
