"""The seed's own cache check, end to end (`python -m bench.cache_seed`): asm-llm-cache.yaml loaded unchanged.

Per run: Debian's redis-server, simulated pods with a realistic profile (qwen2.5-7b on an A10: a chat answer
takes seconds), and `epp gateway` (in-process cache tiers on that Redis, REDIS_EXPIRED_SECONDS from the
environment as a ConfigMap-in-a-container would set it). A question is asked twice (the second must come
from the cache: `x-epp-cache: hit-exact`, and no pod sees it), again after the entry's TTL (a miss), and a
new one with Redis stopped (FAIL_OPEN: answered, the error counted). Each run uses its own seed and question;
the report gives each run and the median and range of the hit/miss latency ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.redis_process import redis_server
from bench.sim.fleet import SimFleet
from gateway.server import GatewayOptions, build_gateway

SEED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seed-configs" / "asm-llm-cache.yaml"
HOST = "dashscope.aliyuncs.com"  # the seed's host_match
QUESTIONS = (
    "Explain what a KV cache is and why it makes multi-turn chat faster.",
    "How does prefix caching in vLLM decide which blocks can be reused?",
    "What is the difference between TTFT and inter-token latency?",
    "Why does round-robin load balancing waste GPU memory for chat workloads?",
    "Describe how an ext_proc filter lets Envoy ask an external service for a routing decision.",
)


@dataclass
class RunResult:
    seed: int
    miss_s: float
    hit_s: float
    hit_header: str
    pod_calls_on_hit: float
    after_ttl_header: str
    redis_down_status: int
    redis_down_header: str
    lookup_errors: float

    @property
    def ratio(self) -> float:
        return self.hit_s / self.miss_s


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def pod_calls(client: httpx.AsyncClient, fleet: SimFleet) -> float:
    texts = [(await client.get(f"{url}/metrics")).text for url in fleet.urls]
    return sum(metric(t, "vllm:request_success_total") for t in texts)


async def run_once(seed: int, ttl_s: int, profile: str) -> RunResult:
    question = {"model": "", "messages": [{"role": "user", "content": QUESTIONS[seed % len(QUESTIONS)]}]}
    headers = {"host": HOST, "authorization": f"Bearer sk-seed-check-{seed}"}
    with redis_server() as redis:
        async with SimFleet(pods=2, profile=profile, seed=seed, log_level="critical") as fleet:
            options = GatewayOptions(
                endpoints=",".join(u.removeprefix("http://") for u in fleet.urls),
                config_paths=[str(SEED)],
                port=0,
                seed=seed,
                log_level="WARNING",
                cache_service="in-process",
            )
            env = {"REDIS_ADDRESS": redis.address, "REDIS_EXPIRED_SECONDS": str(ttl_s)}
            gateway = build_gateway(options, env)
            await gateway.start()
            try:
                async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=120) as c:
                    models = (await c.get("/v1/models")).json()
                    question["model"] = models["data"][0]["id"]
                    started = time.perf_counter()
                    miss = await c.post("/v1/chat/completions", json=question, headers=headers)
                    miss_s = time.perf_counter() - started
                    stored_at = time.monotonic()
                    await asyncio.sleep(0.2)  # the store runs after the answer was sent
                    before = await pod_calls(c, fleet)
                    started = time.perf_counter()
                    hit = await c.post("/v1/chat/completions", json=question, headers=headers)
                    hit_s = time.perf_counter() - started
                    pod_calls_on_hit = await pod_calls(c, fleet) - before
                    await asyncio.sleep(max(0.0, ttl_s + 0.5 - (time.monotonic() - stored_at)))
                    expired = await c.post("/v1/chat/completions", json=question, headers=headers)
                    redis.stop()
                    other = {**question, "messages": [{"role": "user", "content": "And with Redis down?"}]}
                    down = await c.post("/v1/chat/completions", json=other, headers=headers)
                    errors = metric((await c.get("/metrics")).text, "epp_cache_errors_total")
            finally:
                await gateway.stop()
    assert miss.status_code == 200, miss.text
    return RunResult(
        seed,
        miss_s,
        hit_s,
        hit.headers.get("x-epp-cache", "-"),
        pod_calls_on_hit,
        expired.headers.get("x-epp-cache", "-"),
        down.status_code,
        down.headers.get("x-epp-cache", "-"),
        errors,
    )


def report(results: list[RunResult]) -> str:
    lines = [
        "| seed | first (miss) s | second s | x-epp-cache | pod calls | after TTL | Redis down | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {r.miss_s:.3f} | {r.hit_s:.4f} | {r.hit_header} | {r.pod_calls_on_hit:g} | "
            f"{r.after_ttl_header} | {r.redis_down_status} {r.redis_down_header} | {r.lookup_errors:g} |"
        )
    ratios = [r.ratio for r in results]
    lines.append(
        f"\nsecond/first latency: median {statistics.median(ratios):.4f} "
        f"(range {min(ratios):.4f}-{max(ratios):.4f}) over {len(results)} runs"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ttl", type=int, default=3, help="REDIS_EXPIRED_SECONDS for the run (default 3)")
    p.add_argument("--profile", default="qwen2.5-7b-a10", help="simulated pod profile")
    args = p.parse_args(argv)
    results = [asyncio.run(run_once(seed, args.ttl, args.profile)) for seed in range(1, args.runs + 1)]
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
