"""A real Prometheus (Debian's) scrapes a simulated fleet, `epp gateway` and `epp serve` under traffic, and
evaluates every dashboard panel query and every rule expression through its HTTP API.

A query fails the test when Prometheus refuses it, or when it comes back empty though this traffic gives it
data; the few that are empty on a healthy stack are listed in EXPECTED_EMPTY with the reason.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from bench.observe.queries import Query, all_queries, rule_queries
from bench.observe.stack import ObservedStack, observed_stack
from bench.observe.traffic import chat, drive
from tests.test_serve_support import start_serve, stop_serve

pytestmark = pytest.mark.slow

INTERVAL_S = 1.0
RATE_WINDOW = "1m"  # $__rate_interval: the whole run fits in it

# Queries that are rightly empty after this traffic (source prefixes, see bench.observe.queries.Query).
EXPECTED_EMPTY = {
    # Alert conditions: the stack is healthy where they look, or their threshold is not reached.
    "epp.rules.yml: EppNoReadyEndpoints",  # pods are ready
    "epp.rules.yml: EppTimeToFirstTokenHigh",  # the simulator answers in milliseconds
    "epp.rules.yml: EppPoolSaturated",  # KV caches are far from full
    "epp.rules.yml: EppRequestsShed",  # no saturation, nothing shed
    "epp.rules.yml: EppPodMetricsStale",  # pod 2's /metrics is down for a few seconds only (threshold 10 s)
    "epp.rules.yml: EppTargetDown",  # Prometheus reaches every target
    "epp.rules.yml: EppDiscoveryDown",  # the stack lists its pods with --endpoints: no discovery source
    "vllm.rules.yml: VllmTimeToFirstTokenHigh",
    "vllm.rules.yml: VllmKvCacheFull",
    # The simulator reports no usage.prompt_tokens_details.cached_tokens (vLLM does with
    # --enable-prompt-tokens-details), so the picker has no cached-token observation.
    "epp-picker.json: Tokens per second [C]",
}


async def evaluate(stack: ObservedStack, queries: list[Query]) -> tuple[list[str], list[str], int]:
    """(errors, unexpected empties, queries evaluated)."""
    errors: list[str] = []
    empty: list[str] = []
    for q in queries:
        try:
            result = await asyncio.to_thread(stack.prometheus.query, q.expr)
        except Exception as exc:
            errors.append(f"{q.source}: {exc}")
            continue
        if not result and q.source not in EXPECTED_EMPTY:
            empty.append(f"{q.source}: {q.expr}")
        elif result and q.source in EXPECTED_EMPTY:
            errors.append(f"{q.source}: listed as expected empty, but returned {result}")
    return errors, empty, len(queries)


async def wait_scraped(stack: ObservedStack, targets: int) -> None:
    async with asyncio.timeout(30):
        while True:
            health = await asyncio.to_thread(stack.prometheus.targets_up)
            if len(health) == targets and set(health.values()) == {"up"}:
                return
            await asyncio.sleep(0.5)


async def pick_through_serve(base_url: str, n: int) -> None:
    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=10) as client:
        for i in range(n):
            response = await client.post("/pick", json=chat(f"picked {i}"))
            assert response.status_code == 200, response.text


async def test_every_dashboard_and_rule_query_has_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queries = all_queries(RATE_WINDOW)
    async with observed_stack(tmp_path / "stack", interval_s=INTERVAL_S) as stack:
        endpoints = ",".join(u.removeprefix("http://") for u in stack.pool.urls)
        serve = await start_serve("--endpoints", endpoints, "--scrape-interval", "0.5")
        try:
            serve_target = f"127.0.0.1:{serve.http_port}"
            # Prometheus started without `epp serve`: reload it with one more target.
            await asyncio.to_thread(stack.add_epp_target, serve_target, "picker")
            await wait_scraped(stack, len(stack.scrape_targets))
            statuses = await drive(stack)
            await pick_through_serve(serve.base_url, 5)
            await asyncio.sleep(4 * INTERVAL_S)  # a few scrapes and rule evaluations after the traffic
            errors, empty, count = await evaluate(stack, queries)
            groups = (await asyncio.to_thread(stack.prometheus.api, "rules"))["groups"]
            alerts = (await asyncio.to_thread(stack.prometheus.api, "alerts"))["alerts"]
        finally:
            await stop_serve(serve)
    with capsys.disabled():  # shown in CI's log even when the test passes
        expected = len(EXPECTED_EMPTY)
        print(f"\nPrometheus evaluated {count} queries ({expected} expected empty); traffic {statuses}")
    assert statuses.get("2xx", 0) > 20 and statuses.get("5xx", 0) > 0, statuses
    assert not errors, "\n".join(errors)
    assert not empty, f"{len(empty)} queries returned nothing:\n" + "\n".join(empty)
    # Prometheus itself loaded and evaluates the rule files: no rule in error, and the faults raise alerts.
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(rule_queries()) and {r["health"] for r in rules} == {"ok"}, rules
    raised = {a["labels"]["alertname"] for a in alerts}  # pending or firing
    assert {"EppEndpointEjected", "EppProviderEjected", "EppErrorRatioHigh", "EppCacheOutage"} <= raised, (
        raised
    )
