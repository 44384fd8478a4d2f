"""A short traffic mix through the observed stack that gives every dashboard panel something to show.

Rounds are paced a few scrape intervals apart, because Prometheus sees a counter's increase only between two
scrapes: a counter that appears with its final value in one scrape has a rate of 0. Each round sends pool
requests sharing a system prompt (prefix cache hits on the pods), streaming and not; provider requests
through the cached route (repeats are hits, from the in-process LRU even while Redis is down; new questions
are misses) and to the broken provider (ejections, fallbacks); one request while every pool pod fails
(errors). Pool pod 0 answers 500 throughout (retries, pod ejections); pod 2's /metrics is down from the end
of round 2 to the end of round 4 (scrape errors); Redis is stopped for the last three rounds (a cache outage).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from bench.observe.stack import BROKEN_HOST, MODEL, ROUTE_HOST, ObservedStack

SYSTEM = "You are a careful assistant for the observability check. " * 20


def chat(text: str, stream: bool = False, max_tokens: int | None = 8) -> dict[str, Any]:
    """A chat request; without `max_tokens` the answer ends by itself ("stop": the cache stores it)."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        "stream": stream,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


class Statuses(dict[str, int]):
    def count(self, status: int) -> None:
        key = f"{status // 100}xx"
        self[key] = self.get(key, 0) + 1


async def _send(
    client: httpx.AsyncClient, body: dict[str, Any], host: str | None = None, **headers: str
) -> int:
    if host:
        headers["host"] = host
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    return response.status_code


async def _round(stack: ObservedStack, client: httpx.AsyncClient, r: int, statuses: Statuses) -> None:
    pool = [_send(client, chat(f"user {u} round {r}", stream=u % 2 == 0)) for u in range(8)]
    for status in await asyncio.gather(*pool):
        statuses.count(status)
    for q in range(3):  # the same three questions every round: cache hits from the second round on
        statuses.count(await _send(client, chat(f"cached question {q}", max_tokens=None), ROUTE_HOST))
    for q in range(2):  # new questions: misses, stored (or lookup errors while Redis is down)
        statuses.count(await _send(client, chat(f"fresh question {r}.{q}", max_tokens=None), ROUTE_HOST))
    statuses.count(await _send(client, chat(f"streamed question {r}", stream=True), ROUTE_HOST))
    no_store = {"cache-control": "no-store"}  # the cache stays out: a bypass
    statuses.count(await _send(client, chat(f"not cached {r}"), ROUTE_HOST, **no_store))
    statuses.count(await _send(client, chat(f"to the broken provider {r}"), BROKEN_HOST))
    for pod in stack.pool.pods:  # every pool pod fails for one request
        pod.fault.set("error", 503)
    statuses.count(await _send(client, chat(f"during the outage {r}")))
    _steady_faults(stack, metrics_down=r in (1, 2))


def _steady_faults(stack: ObservedStack, metrics_down: bool) -> None:
    """Pod 0 answers 500; pod 2's /metrics is down (until the next round ends) when `metrics_down`."""
    pods = stack.pool.pods
    for pod in pods:
        pod.fault.clear()
    pods[0].fault.set("error", 500)
    if metrics_down:
        pods[2].fault.set("metrics_down")


async def drive(stack: ObservedStack, rounds: int = 5, pause_s: float = 1.5) -> Statuses:
    """Send the mix `rounds` times, `pause_s` apart; returns how many answers had each status class."""
    statuses = Statuses()
    _steady_faults(stack, metrics_down=False)
    async with httpx.AsyncClient(base_url=stack.gateway.base_url, trust_env=False, timeout=60) as client:
        for r in range(rounds):
            if r == rounds - 3:
                stack.redis.stop()  # the response cache's backend goes away; requests go on uncached
            await _round(stack, client, r, statuses)
            await asyncio.sleep(pause_s)
    for pod in stack.pool.pods:
        pod.fault.clear()
    return statuses
