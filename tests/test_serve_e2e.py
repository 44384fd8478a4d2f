"""End to end over loopback: `epp sim` pods and `epp serve` as real processes, over HTTP and ext_proc."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_serve_support import (
    ServeProcess,
    SimFleetProcess,
    extproc_route,
    start_serve,
    start_sim,
    stop_process,
    stop_serve,
    wait_until,
)

pytestmark = pytest.mark.slow

MODEL = "m"
STALENESS_S = 0.5


@dataclass
class Setup:
    pods: list[str]  # host:port of each simulated pod
    serve: ServeProcess
    epp: httpx.AsyncClient  # to epp's HTTP API
    direct: httpx.AsyncClient  # for talking to the pods themselves

    async def pick(self, body: dict[str, object]) -> dict[str, object]:
        r = await self.epp.post("/pick", json=body)
        assert r.status_code == 200, r.text
        answer: dict[str, object] = r.json()
        return answer

    async def gauge(self, name: str, pod: str) -> float | None:
        text = (await self.epp.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and pod in (
                    s.labels.get("endpoint"),
                    s.labels.get("model_server_endpoint"),
                ):
                    return s.value
        return None


Start = Callable[..., Awaitable[Setup]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """start(pods, profile, strategy, *sim_args): a simulator fleet and `epp serve` over it."""
    sims: list[SimFleetProcess] = []
    serves: list[ServeProcess] = []
    clients: list[httpx.AsyncClient] = []

    async def _start(pods: int, profile: str, strategy: str, *sim_args: str) -> Setup:
        sim = await start_sim(
            "--pods",
            str(pods),
            "--base-port",
            "0",
            "--profile",
            profile,
            "--served-model-name",
            MODEL,
            *sim_args,
        )
        sims.append(sim)
        addresses = sim.addresses
        serve = await start_serve(
            "--endpoints",
            ",".join(addresses),
            "--strategy",
            strategy,
            "--scrape-interval",
            "0.05",
            "--staleness",
            str(STALENESS_S),
            "--seed",
            "0",
        )
        serves.append(serve)
        epp = httpx.AsyncClient(base_url=serve.base_url, trust_env=False, timeout=10)
        direct = httpx.AsyncClient(trust_env=False, timeout=None)
        clients.extend((epp, direct))
        setup = Setup(addresses, serve, epp, direct)

        async def all_schedulable() -> bool:
            r = await epp.get("/readyz")
            return r.status_code == 200 and r.json()["schedulable_endpoints"] == pods

        await wait_until(all_schedulable, "every pod to be scraped")
        return setup

    try:
        yield _start
    finally:
        for client in clients:
            await client.aclose()
        codes = [await stop_serve(serve) for serve in serves]
        for sim in sims:
            await stop_process(sim.proc)
        assert codes == [0] * len(codes), "".join(line for serve in serves for line in serve.log)


def chat(text: str, model: str = MODEL) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def long_text(seed: int, words: int = 400) -> str:
    """A distinct long text per seed (differs from its first word on)."""
    return " ".join(f"w{(seed * 7919 + i * 104729) % 100003}" for i in range(words))


@contextlib.asynccontextmanager
async def load_on(
    setup: Setup, pod: str, n: int, model: str = MODEL, max_tokens: int = 900
) -> AsyncIterator[None]:
    """`n` concurrent long completions sent straight to `pod`; cancelled (so aborted by the pod) on exit."""

    async def one(i: int) -> None:
        body = {"model": model, "prompt": f"load {i}", "max_tokens": max_tokens}
        await setup.direct.post(f"http://{pod}/v1/completions", json=body)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_shared_prefix_sticks_and_distinct_prompts_spread(start: Start) -> None:
    setup = await start(3, "tiny", "PREFIX_CACHE")
    shared = long_text(1)
    first = await setup.pick(chat(shared + " question 0"))
    home = first["endpoint"]
    for i in range(1, 8):
        answer = await setup.pick(chat(f"{shared} question {i}"))
        assert answer["endpoint"] == home
        assert isinstance(answer["prefix_match_ratio"], float)
        assert answer["prefix_match_ratio"] > 0.9
    # ext_proc, as Envoy would ask: the same prefix goes to the same pod, and the header carries it.
    for i in range(3):
        routed = await extproc_route(setup.serve.grpc_port, chat(f"{shared} grpc question {i}"))
        assert routed.destination == home
    # Different long prompts have no cached prefix anywhere: they spread over the pods.
    spread = {(await setup.pick(chat(long_text(100 + i))))["endpoint"] for i in range(12)}
    assert len(spread) >= 2
    spread_grpc = set()
    for i in range(12):
        routed = await extproc_route(setup.serve.grpc_port, chat(long_text(200 + i)))
        spread_grpc.add(routed.destination)
    assert len(spread_grpc) >= 2
    metrics = (await setup.epp.get("/metrics")).text
    assert 'epp_decisions_total{result="ok",strategy="PREFIX_CACHE"} 35.0' in metrics


async def test_saturated_pod_is_avoided_even_with_prefix_affinity(start: Start) -> None:
    setup = await start(3, "tiny", "PREFIX_CACHE")
    shared = long_text(2)
    home = str((await setup.pick(chat(shared)))["endpoint_name"])
    assert (await setup.pick(chat(shared + " again")))["endpoint_name"] == home
    # The tiny profile runs 4 sequences at once: 14 long requests leave 10 waiting on `home`.
    async with load_on(setup, home, 14):

        async def saturated() -> bool:
            waiting = await setup.gauge("llm_d_epp_per_endpoint_queue_size", home)
            return waiting is not None and waiting >= 5

        await wait_until(saturated, f"{home}'s queue to fill")
        for i in range(6):
            assert (await setup.pick(chat(f"{shared} question {i}")))["endpoint_name"] != home
            routed = await extproc_route(setup.serve.grpc_port, chat(f"{shared} grpc {i}"))
            assert routed.destination != home


async def test_pod_with_failing_metrics_is_dropped_then_readmitted(start: Start) -> None:
    setup = await start(3, "tiny", "LEAST_REQUEST")
    victim = setup.pods[1]
    r = await setup.direct.post(f"http://{victim}/sim/fault", json={"mode": "metrics_down"})
    assert r.status_code == 200

    async def dropped() -> bool:
        return await setup.gauge("epp_endpoint_schedulable", victim) == 0.0

    await wait_until(dropped, f"{victim} to become unschedulable", deadline_s=STALENESS_S * 10)
    r = await setup.epp.get("/readyz")
    assert r.json()["schedulable_endpoints"] == 2
    for i in range(20):
        assert (await setup.pick(chat(long_text(300 + i))))["endpoint_name"] != victim
    errors = await setup.gauge("epp_scrape_errors_total", victim)
    assert errors is not None and errors >= 1
    # Recovery: scrapes succeed again and the pod is picked again.
    r = await setup.direct.post(f"http://{victim}/sim/fault", json={"mode": "none"})
    assert r.status_code == 200
    counter = iter(range(400, 10_000))

    async def picked_again() -> bool:
        return (await setup.pick(chat(long_text(next(counter)))))["endpoint_name"] == victim

    await wait_until(picked_again, f"{victim} to be picked again")


async def test_lora_request_goes_to_the_pod_with_the_adapter(start: Start) -> None:
    # A big KV cache (H100 profile) so the long request keeps the pod unsaturated.
    setup = await start(3, "qwen2.5-7b-h100", "LOAD_AWARE", "--lora-modules", "sql-lora", "--max-loras", "1")
    holder = setup.pods[2]
    # The adapter shows as running only while a request uses it: keep one long request going on `holder`.
    async with load_on(setup, holder, 1, model="sql-lora", max_tokens=20_000):
        counter = iter(range(10_000))

        async def adapter_scored() -> dict[str, object] | None:
            answer = await setup.pick(chat(long_text(next(counter)), model="sql-lora"))
            scores = answer["scores"]
            assert isinstance(scores, dict)
            # Until a scrape shows the adapter on a pod, epp does not know the name is an adapter and
            # scores every pod 1.0 (neutral); after, only `holder` has it loaded.
            lora = scores["lora-affinity-scorer"]
            others = [score for pod, score in lora.items() if pod != holder]
            return answer if lora[holder] == 1.0 and max(others) < 1.0 else None

        answer = await wait_until(adapter_scored, f"the scrape to show sql-lora running on {holder}")
        assert answer["endpoint_name"] == holder
        for i in range(8):
            body = chat(long_text(20_000 + i), model="sql-lora")
            assert (await setup.pick(body))["endpoint_name"] == holder
            routed = await extproc_route(setup.serve.grpc_port, body)
            assert routed.destination == holder
        # The base model has no adapter preference: it is not pinned to `holder`.
        spread = {(await setup.pick(chat(long_text(30_000 + i))))["endpoint_name"] for i in range(12)}
        assert len(spread) >= 2
