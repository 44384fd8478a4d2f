"""Two `epp serve` replicas of one pool, each following the pods' KV events, make identical prefix decisions.

Real processes: a simulated fleet publishing vLLM-format KV events, two `epp serve` replicas with the
`precise-prefix-cache-scorer` (speculative credit off: it is per replica by design). The conversations are
sent to the pods directly, bypassing both pickers, so neither replica learned anything from its own picks:
whatever they agree on came from the events.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.sim.fleet import SimFleet
from bench.sim.kv_events import KVEventsConfig
from tests.test_serve_support import ServeProcess, start_serve, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SIM_EVENTS = KVEventsConfig("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "kv@sim")
PRECISE = "precise-prefix-cache-scorer"
PICKER = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
metadata: {name: precise-replicas}
plugins:
- type: prefix-cache-scorer
- type: precise-prefix-cache-scorer
  parameters: {speculative: false, prefixCachePlugin: prefix-cache-scorer}
- type: least-request-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: precise-prefix-cache-scorer, weight: 3}
  - {pluginRef: least-request-scorer, weight: 1}
  - {pluginRef: max-score-picker}
kvEvents: {discover: true}
"""


def chat(topic: int, question: str) -> dict[str, Any]:
    system = " ".join(f"topic{topic} fact{i} is about subject{topic * 31 + i}." for i in range(60))
    return {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 2,
    }


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(pods=3, profile="qwen2.5-7b-a10", time_scale=20.0, kv_events=SIM_EVENTS) as pods:
        yield pods


async def _replicas(fleet: SimFleet, config: Path) -> list[ServeProcess]:
    endpoints = ",".join(f"{e.host}:{e.port}" for e in fleet.endpoints)
    starts = (start_serve("--config", str(config), "--endpoints", endpoints) for _ in range(2))
    return list(await asyncio.gather(*starts))


async def until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 60.0) -> None:
    """Poll the async `check` until it holds; fail naming `what` after `within_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.1)


async def _synced(client: httpx.AsyncClient, replica: ServeProcess) -> bool:
    health = (await client.get(f"{replica.base_url}/healthz")).json()
    states = health.get("kvEvents", {})
    return len(states) == 3 and all(s["state"] == "synced" for s in states.values())


async def _pick(client: httpx.AsyncClient, replica: ServeProcess, body: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post(f"{replica.base_url}/pick", json=body)
    assert answer.status_code == 200, answer.text
    out: dict[str, Any] = answer.json()
    return out


async def test_two_replicas_make_identical_prefix_decisions_from_the_events(
    fleet: SimFleet, tmp_path: Path
) -> None:
    (tmp_path / "picker.yaml").write_text(PICKER)
    replicas = await _replicas(fleet, tmp_path / "picker.yaml")
    try:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
            for replica in replicas:
                await until(functools.partial(_synced, client, replica), "every pod synced on both replicas")
            # Conversation i is served by pod i, straight from the client: no picker saw it.
            for i, url in enumerate(fleet.urls):
                answer = await client.post(f"{url}/v1/chat/completions", json=chat(i, "first question?"))
                assert answer.status_code == 200, answer.text
            follow_ups = [chat(i, "a follow-up question about it?") for i in range(3)]
            names: list[str] = []
            for i, body in enumerate(follow_ups):

                async def holder_known(body: dict[str, Any] = body) -> bool:
                    picks = [await _pick(client, r, body) for r in replicas]
                    return all((p["prefix_match_ratio"] or 0.0) > 0.5 for p in picks)

                await until(holder_known, f"conversation {i}'s events applied on both replicas")
            for body in [*follow_ups, chat(7, "a conversation nobody has seen")]:
                first, second = [await _pick(client, r, body) for r in replicas]
                assert first["scores"][PRECISE] == second["scores"][PRECISE]
                names.append(first["endpoint"] if first["endpoint"] == second["endpoint"] else "differ")
            # Each follow-up goes to the pod that holds its conversation, on both replicas.
            assert names[:3] == [f"{e.host}:{e.port}" for e in fleet.endpoints]
            # No pod holds the unseen conversation's first block; its pick is a load tie (random tie-break).
            assert set(first["scores"][PRECISE].values()) == {0.0}
    finally:
        for replica in replicas:
            await stop_process(replica.proc)
            replica.drain.cancel()
