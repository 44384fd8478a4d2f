"""Pod health through `epp gateway`: outlier ejection and its limits, slow scrapes, dead, hung, silent pods.

The gateway runs in-process in front of simulated pods (bench/sim) whose faults are switched on and off
from the test; outlier detection is configured with the InferencePool annotations the gateway reads
(epp/health/outlier_settings.py), with short intervals and ejection times so each test takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from bench.sim.fleet import SimFleet
from epp.config.routing_strategy import STRATEGY_ANNOTATION
from epp.embedded_http import EmbeddedServer
from epp.health.endpoint_health import ROUTABLE, HealthState
from epp.health.outlier import OutlierDetector
from epp.health.outlier_settings import OUTLIER_ANNOTATION_PREFIX
from epp.request import flatten_messages
from gateway.asgi import Receive, Scope, Send, send_bytes
from gateway.server import Gateway
from gateway.upstream import ENDPOINT_HEADER
from scorers.prefix_cache_scorer import PrefixCacheScorer
from scorers.prefix_index import block_hashes
from tests.test_gateway_support import (
    MODEL,
    addresses,
    assert_openai_error,
    chat,
    client_of,
    completion,
    metric_value,
    serving,
)
from tests.test_serve_support import wait_until
from tests.test_sim_support import prompt

POD_HEADER = ENDPOINT_HEADER.decode()
CHAT = "/v1/chat/completions"


# -- helpers -------------------------------------------------------------------------------------------------
def name_of(url: str) -> str:
    """A pod's endpoint name ("host:port") from its URL."""
    return url.removeprefix("http://")


def pool_config(tmp_path: Path, outlier: Mapping[str, str], strategy: str | None = None) -> str:
    """An InferencePool document with outlier-detection annotations, written to tmp_path; its path."""
    annotations = {f"{OUTLIER_ANNOTATION_PREFIX}{k}": v for k, v in outlier.items()}
    if strategy is not None:
        annotations[STRATEGY_ANNOTATION] = strategy
    doc = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferencePool",
        "metadata": {"name": "pool", "annotations": annotations},
        "spec": {"targetPortNumber": 8000, "selector": {"app": "vllm"}},
    }
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def metrics_text(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


def attempts_on(text: str, endpoint: str, outcome: str | None = None) -> float:
    labels = {"endpoint": endpoint} if outcome is None else {"endpoint": endpoint, "outcome": outcome}
    return metric_value(text, "epp_endpoint_attempts_total", **labels)


def health_of(gateway: Gateway, endpoint: str) -> HealthState:
    state = gateway.datastore.get(endpoint)
    assert state is not None, endpoint
    return gateway.datastore.health_state(state)


async def drive_until_ejected(
    client: httpx.AsyncClient, outlier: OutlierDetector, host: str, tag: str, limit: int = 30
) -> tuple[float, float]:
    """Send requests one at a time (each must be 200) until `host` is ejected.

    Returns time.monotonic() just before and just after the request that ejected it.
    """
    for i in range(limit):
        before = time.monotonic()
        r = await client.post(CHAT, json=chat(f"{tag} {i}"))
        after = time.monotonic()
        assert r.status_code == 200, r.text
        if outlier.is_ejected(host):
            return before, after
    raise AssertionError(f"{host} not ejected after {limit} requests")


async def wait_returned(outlier: OutlierDetector, host: str, deadline_s: float) -> float:
    """Poll (every 5 ms: sweeps run lazily, at the first look after they are due) until `host` is back."""
    deadline = time.monotonic() + deadline_s
    while outlier.is_ejected(host):
        if time.monotonic() > deadline:
            raise AssertionError(f"{host} still ejected after {deadline_s}s")
        await asyncio.sleep(0.005)
    return time.monotonic()


def prefix_scorer(gateway: Gateway) -> PrefixCacheScorer:
    for hook in gateway.core.scheduler.profile().pre_requests:
        if isinstance(hook, PrefixCacheScorer):
            return hook
    raise AssertionError("the default profile has no prefix-cache-scorer")


def chat_hashes(scorer: PrefixCacheScorer, body: Mapping[str, Any]) -> list[int]:
    """The prefix index's block hashes of a chat request body, as the scorer computes them."""
    text = flatten_messages(body["messages"])
    return block_hashes(text, MODEL, scorer.block_size, scorer.max_prefix_blocks, body.get("cache_salt"))


def access_lines(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Access-log lines by request id."""
    out = {}
    for rec in caplog.records:
        if rec.name == "gateway.access":
            message = rec.getMessage()
            match = re.search(r"request_id=(\S+)", message)
            assert match is not None, message
            out[match.group(1)] = message
    return out


async def access_line(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    """The access-log line of `request_id`; it is written just after the reply's last byte, so wait for it."""

    async def logged() -> str | None:
        return access_lines(caplog).get(request_id)

    return await wait_until(logged, f"the access-log line of {request_id}", deadline_s=2.0, interval=0.005)


def log_field(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", line)
    assert match is not None, f"no {name}= in {line!r}"
    return match.group(1)


# -- 1. a pod answering 500 ----------------------------------------------------------------------------------
BASE_EJECTION_S = 0.6
SWEEP_S = 0.2


async def test_pod_answering_500_is_ejected_spared_and_returns_after_a_doubling_ejection_time(
    tmp_path: Path,
) -> None:
    config = pool_config(
        tmp_path,
        {
            "consecutive5xxErrors": "2",
            "interval": f"{SWEEP_S * 1000:g}ms",
            "baseEjectionTime": f"{BASE_EJECTION_S * 1000:g}ms",
            "maxEjectionPercent": "50",
            "minHealthPercent": "0",
        },
    )
    async with (
        SimFleet(pods=3, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), config=[config], strategy="ROUND_ROBIN") as gateway,
        client_of(gateway) as client,
    ):
        bad = name_of(fleet.urls[0])
        outlier = gateway.core.outlier
        fleet.pods[0].fault.set("error", status=500)

        # Ejected on exactly the second consecutive 500; every client still got a 200 (retried elsewhere).
        before, after = await drive_until_ejected(client, outlier, bad, "first")
        text = await metrics_text(client)
        assert attempts_on(text, bad) == attempts_on(text, bad, "http_5xx") == 2
        assert metric_value(text, "epp_endpoint_ejections_total", endpoint=bad, reason="consecutive_5xx") == 1
        assert metric_value(text, "epp_endpoint_state", endpoint=bad, state="ejected") == 1
        assert health_of(gateway, bad) is HealthState.EJECTED
        first = outlier.state(bad)
        assert first is not None and first.times_ejected == 1 and first.ejected_until is not None
        # ejected_until = ejected_at + duration, ejected_at within the ejecting request: duration = base.
        assert first.ejected_until - after - 1e-3 <= BASE_EJECTION_S <= first.ejected_until - before + 1e-3
        ejected_at_1 = first.ejected_until - BASE_EJECTION_S

        # While ejected: no attempt reaches it, and every request is served by the others.
        replies = [await client.post(CHAT, json=chat(f"spared {i}")) for i in range(9)]
        assert [r.status_code for r in replies] == [200] * 9
        assert bad not in {r.headers[POD_HEADER] for r in replies}
        assert attempts_on(await metrics_text(client), bad) == 2
        assert outlier.is_ejected(bad)  # the requests above were all sent inside the ejection

        # Back after base x 1 (at the first sweep after it); still failing, it is ejected again at once,
        # before a healthy interval could decay the multiplier: the second ejection lasts twice as long.
        returned_1 = await wait_returned(outlier, bad, deadline_s=5.0)
        assert BASE_EJECTION_S - 1e-3 <= returned_1 - ejected_at_1 <= BASE_EJECTION_S + SWEEP_S + 0.3
        before, after = await drive_until_ejected(client, outlier, bad, "again")
        assert attempts_on(await metrics_text(client), bad) == 4  # traffic reached it after its return
        second = outlier.state(bad)
        assert second is not None and second.times_ejected == 2 and second.ejections_total == 2
        assert second.ejected_until is not None
        double = 2 * BASE_EJECTION_S
        assert second.ejected_until - after - 1e-3 <= double <= second.ejected_until - before + 1e-3
        ejected_at_2 = second.ejected_until - double

        # Healthy again, it comes back after the doubled time and gets its round-robin share.
        fleet.pods[0].fault.clear()
        returned_2 = await wait_returned(outlier, bad, deadline_s=5.0)
        assert double - 1e-3 <= returned_2 - ejected_at_2 <= double + SWEEP_S + 0.3
        assert returned_2 - ejected_at_2 > 1.5 * (returned_1 - ejected_at_1)
        replies = [await client.post(CHAT, json=chat(f"welcome back {i}")) for i in range(6)]
        assert [r.status_code for r in replies] == [200] * 6
        assert [r.headers[POD_HEADER] for r in replies].count(bad) == 2
        text = await metrics_text(client)
        assert metric_value(text, "epp_endpoint_ejections_total", endpoint=bad) == 2
        assert metric_value(text, "epp_endpoint_state", endpoint=bad, state="healthy") == 1
        assert all(s.in_flight == 0 for s in gateway.datastore.states())


# -- 2. a hung pod -------------------------------------------------------------------------------------------
async def test_hung_pod_costs_each_client_at_most_one_first_byte_timeout_and_is_ejected(
    tmp_path: Path,
) -> None:
    first_byte_s = 1.0
    config = pool_config(
        tmp_path,
        {
            "consecutive5xxErrors": "2",
            "interval": "200ms",
            "baseEjectionTime": "1.5s",
            "maxEjectionPercent": "50",
        },
    )
    async with (
        SimFleet(pods=3, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(
            addresses(fleet), config=[config], strategy="ROUND_ROBIN", first_byte_timeout_s=first_byte_s
        ) as gateway,
        client_of(gateway) as client,
    ):
        hung = name_of(fleet.urls[0])
        fleet.pods[0].fault.set("hang")  # accepts and reads the request, never answers

        async def timed(i: int) -> tuple[httpx.Response, float]:
            start = time.perf_counter()
            r = await client.post(CHAT, json=chat(f"client {i}"))
            return r, time.perf_counter() - start

        results = await asyncio.gather(*(timed(i) for i in range(20)))
        assert [r.status_code for r, _ in results] == [200] * 20
        assert hung not in {r.headers[POD_HEADER] for r, _ in results}
        waits = [w for _, w in results]
        assert max(waits) < 2 * first_byte_s + 1.5, waits  # one first-byte timeout, then one retry
        assert sum(w >= first_byte_s for w in waits) >= 2  # those first sent to the hung pod waited it out

        text = await metrics_text(client)
        timeouts = attempts_on(text, hung, "first_byte_timeout")
        assert timeouts >= 2 and attempts_on(text, hung) == timeouts
        assert metric_value(text, "epp_retries_total", reason="first_byte_timeout") == timeouts
        # Timeouts are gateway errors, which count toward consecutive 5xx: ejected (once).
        assert gateway.core.outlier.is_ejected(hung)
        assert health_of(gateway, hung) is HealthState.EJECTED
        assert metric_value(text, "epp_endpoint_ejections_total", endpoint=hung) == 1

        # No new traffic while ejected: nothing waits for the hung pod any more.
        replies = [await client.post(CHAT, json=chat(f"later {i}")) for i in range(6)]
        assert [r.status_code for r in replies] == [200] * 6
        assert hung not in {r.headers[POD_HEADER] for r in replies}
        assert attempts_on(await metrics_text(client), hung) == timeouts
        assert gateway.core.outlier.is_ejected(hung)
        assert all(s.in_flight == 0 for s in gateway.datastore.states())


# -- 3. the limits of ejection -------------------------------------------------------------------------------
async def test_max_ejection_percent_caps_ejections_when_every_pod_fails(tmp_path: Path) -> None:
    config = pool_config(
        tmp_path,
        {
            "consecutive5xxErrors": "2",
            "interval": "200ms",
            "baseEjectionTime": "30s",  # nobody returns during the test
            "maxEjectionPercent": "50",
        },
    )
    async with (
        SimFleet(pods=4, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), config=[config], strategy="ROUND_ROBIN") as gateway,
        client_of(gateway) as client,
    ):
        for pod in fleet.pods:
            pod.fault.set("error", status=500)
        outlier = gateway.core.outlier
        most = 0
        for i in range(16):
            r = await client.post(CHAT, json=chat(f"doomed {i}"))
            assert r.status_code == 500  # both attempts failed: the last pod's own answer
            ejected = outlier.ejected_hosts()
            assert len(ejected) <= 2, ejected
            most = max(most, len(ejected))
        assert most == 2
        text = await metrics_text(client)
        assert metric_value(text, "epp_endpoint_ejections_total") == 2
        assert metric_value(text, "epp_endpoint_state", state="ejected") == 2
        kept = [name_of(u) for u in fleet.urls if not outlier.is_ejected(name_of(u))]
        assert len(kept) == 2
        for name in kept:  # they reached the threshold too (more than once), and were refused ejection
            assert attempts_on(text, name, "http_5xx") >= 4
            state = outlier.state(name)
            assert state is not None and not state.ejected and state.ejections_total == 0
            assert health_of(gateway, name) is HealthState.HEALTHY


async def test_min_health_percent_ignores_an_ejection_that_leaves_too_few_pods(tmp_path: Path) -> None:
    # 2 pods, 1 ejected: 50% healthy < 60% -> panic, every pod routable (the record of the ejection stays).
    config = pool_config(
        tmp_path,
        {
            "consecutive5xxErrors": "2",
            "interval": "200ms",
            "baseEjectionTime": "30s",
            "maxEjectionPercent": "50",
            "minHealthPercent": "60",
        },
    )
    async with (
        SimFleet(pods=2, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), config=[config], strategy="ROUND_ROBIN") as gateway,
        client_of(gateway) as client,
    ):
        bad = name_of(fleet.urls[0])
        outlier = gateway.core.outlier
        fleet.pods[0].fault.set("error", status=500)
        for i in range(10):
            r = await client.post(CHAT, json=chat(f"q {i}"))
            assert r.status_code == 200, r.text
            raw = outlier.state(bad)
            assert raw is not None
            if raw.ejected:
                break
        raw = outlier.state(bad)
        assert raw is not None and raw.ejected and raw.ejections_total == 1  # ejection did happen...
        assert outlier.panic()
        assert not outlier.is_ejected(bad) and outlier.ejected_hosts() == []  # ...and is ignored
        assert health_of(gateway, bad) in ROUTABLE
        text = await metrics_text(client)
        assert metric_value(text, "epp_endpoint_ejections_total", endpoint=bad) == 1
        assert metric_value(text, "epp_endpoint_state", endpoint=bad, state="ejected") == 0
        seen = attempts_on(text, bad)

        replies = [await client.post(CHAT, json=chat(f"still routed {i}")) for i in range(4)]
        assert [r.status_code for r in replies] == [200] * 4  # its 500s are retried on the other pod
        assert attempts_on(await metrics_text(client), bad) >= seen + 2  # it still gets traffic


# -- 4. a slow scrape ----------------------------------------------------------------------------------------
async def test_one_slow_scrape_moves_no_traffic() -> None:
    async with (
        SimFleet(pods=4, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), strategy="ROUND_ROBIN", staleness_s=1.0, scrape_timeout_s=0.2) as gateway,
        client_of(gateway) as client,
    ):
        slow = name_of(fleet.urls[1])
        for i in range(4):  # warm the connections
            assert (await client.post(CHAT, json=chat(f"warm {i}"))).status_code == 200
        started = time.monotonic()
        fleet.pods[1].fault.set("metrics_hang")

        async def is_slow() -> bool:
            return health_of(gateway, slow) is HealthState.SLOW

        await wait_until(is_slow, "the scrape of the slow pod to time out", deadline_s=2.0, interval=0.01)
        served = []
        for i in range(8):
            r = await client.post(CHAT, json=chat(f"during {i}"))
            assert r.status_code == 200, r.text
            served.append(r.headers[POD_HEADER])
            assert health_of(gateway, slow) is HealthState.SLOW  # slow, not out, for every one of them
        await asyncio.sleep(max(0.0, started + 0.4 - time.monotonic()))
        fleet.pods[1].fault.clear()

        async def is_healthy() -> bool:
            return health_of(gateway, slow) is HealthState.HEALTHY

        await wait_until(is_healthy, "the slow pod's next good scrape", deadline_s=2.0, interval=0.01)
        # Round robin over the same four pods: each, the slow one included, got exactly its share.
        assert {name_of(u): served.count(name_of(u)) for u in fleet.urls} == {
            name_of(u): 2 for u in fleet.urls
        }
        text = await metrics_text(client)
        assert metric_value(text, "epp_scrape_errors_total", endpoint=slow) >= 1
        assert metric_value(text, "epp_retries_total") == 0


# -- 5. a pod killed between two scrapes ---------------------------------------------------------------------
async def test_pod_killed_between_scrapes_costs_no_prefix_cache_request() -> None:
    async with contextlib.AsyncExitStack() as stack:
        fleets = [
            await stack.enter_async_context(
                SimFleet(pods=1, profile="tiny", time_scale=20.0, seed=i, log_level="critical")
            )
            for i in range(3)
        ]
        gateway = await stack.enter_async_context(
            serving(addresses(*fleets), strategy="PREFIX_CACHE", staleness_s=60.0)
        )
        client = await stack.enter_async_context(client_of(gateway))
        scorer = prefix_scorer(gateway)
        shared = prompt(5, words=120)
        pods = []
        for i in range(4):
            r = await client.post(CHAT, json=chat(f"{shared}\nQuestion {i}?", max_tokens=2))
            assert r.status_code == 200, r.text
            pods.append(r.headers[POD_HEADER])
        assert len(set(pods)) == 1, pods  # prefix affinity
        doomed = pods[0]
        doomed_fleet = next(f for f in fleets if name_of(f.urls[0]) == doomed)

        # Right after a scrape of the doomed pod: no further scrape (so it still looks healthy), then kill.
        state = gateway.datastore.get(doomed)
        assert state is not None and state.metrics is not None
        last = state.metrics.scraped_at

        async def scraped_again() -> bool:
            return state.metrics is not None and state.metrics.scraped_at > last

        await wait_until(scraped_again, "a fresh scrape of the doomed pod", interval=0.005)
        await gateway.core.stop_scraping()
        await doomed_fleet.stop()
        assert health_of(gateway, doomed) is HealthState.HEALTHY

        # A new question (two new full blocks) on the same shared prefix: affinity still names the dead pod.
        body = chat(f"{shared}\n" + "Now a different and fairly long follow-up question, please? " * 3)
        hashes = chat_hashes(scorer, body)
        held_before = scorer.index.match(hashes).get(doomed, 0)
        assert 0.5 * len(hashes) < held_before < len(hashes)
        r = await client.post(CHAT, json=body)
        assert r.status_code == 200, r.text
        survivor = r.headers[POD_HEADER]
        assert survivor != doomed

        text = await metrics_text(client)
        failed = attempts_on(text, doomed, "connect_failed") + attempts_on(text, doomed, "reset")
        assert failed == 1 and metric_value(text, "epp_retries_total") == 1
        # The index credits the pod that served with the whole prompt; the dead pod gained nothing.
        matched = scorer.index.match(hashes)
        assert matched.get(survivor) == len(hashes)
        assert matched.get(doomed, 0) == held_before
        assert health_of(gateway, doomed) is HealthState.UNREACHABLE
        assert all(s.in_flight == 0 for s in gateway.datastore.states())


# -- 6. after a retry, in-flight counts and the index follow the pod that serves -----------------------------
async def test_after_a_retry_in_flight_and_the_index_name_the_pod_that_served() -> None:
    async with (
        SimFleet(pods=2, profile="tiny", time_scale=0.2, log_level="critical") as fleet,
        serving(addresses(fleet), strategy="PREFIX_CACHE") as gateway,
        client_of(gateway) as client,
    ):
        scorer = prefix_scorer(gateway)
        shared = prompt(7, words=100)
        r = await client.post(CHAT, json=chat(shared, max_tokens=1))
        assert r.status_code == 200, r.text
        failing = r.headers[POD_HEADER]  # it holds the prefix now, so it is picked first below
        serving_pod = next(name_of(u) for u in fleet.urls if name_of(u) != failing)
        fleet.pods[[name_of(u) for u in fleet.urls].index(failing)].fault.set("close")

        body = chat(shared + "\nAnd then, what happened next in the story? Tell me all of it. " * 2)
        body |= {"max_tokens": 60, "stream": True}
        hashes = chat_hashes(scorer, body)
        before = scorer.index.match(hashes)
        held = before.get(failing, 0)
        assert 0.5 * len(hashes) < held < len(hashes) and serving_pod not in before

        async with client.stream("POST", CHAT, json=body) as stream:
            assert stream.status_code == 200
            assert stream.headers[POD_HEADER] == serving_pod
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: {")
            # Mid-stream: counted in flight where it is served, nowhere else.
            serving_state, failing_state = gateway.datastore.get(serving_pod), gateway.datastore.get(failing)
            assert serving_state is not None and failing_state is not None
            assert (serving_state.in_flight, failing_state.in_flight) == (1, 0)
            matched = scorer.index.match(hashes)
            assert matched.get(serving_pod) == len(hashes)
            assert matched.get(failing, 0) == held  # the failed attempt's new blocks were taken back
            rest = [line async for line in lines if line]
        assert rest[-1] == "data: [DONE]"

        text = await metrics_text(client)
        assert attempts_on(text, failing, "reset") == 1
        assert metric_value(text, "epp_retries_total", reason="reset") == 1
        assert attempts_on(text, serving_pod, "ok") == 1
        assert all(s.in_flight == 0 for s in gateway.datastore.states())


# -- 7. LoRA routing only for real adapters ------------------------------------------------------------------
ADAPTER = "tiny-lora"


def models_config(tmp_path: Path) -> str:
    text = f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {{name: pool}}
spec: {{targetPortNumber: 8000, selector: {{app: vllm}}}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: alias}}
spec: {{modelName: chat-alias, poolRef: {{name: pool}}, targetModels: [{{name: {MODEL}}}]}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: adapter}}
spec: {{modelName: {ADAPTER}, poolRef: {{name: pool}}, targetModels: [{{name: {ADAPTER}}}]}}
"""
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return str(path)


async def test_inference_model_renaming_the_base_model_is_not_lora_routed(tmp_path: Path) -> None:
    async with (
        SimFleet(
            pods=2, profile="tiny", time_scale=20.0, lora_modules=(ADAPTER,), log_level="critical"
        ) as fleet,
        serving(addresses(fleet), config=[models_config(tmp_path)]) as gateway,
        client_of(gateway) as client,
    ):
        body = {**chat("hello alias"), "model": "chat-alias"}
        r = await client.post(CHAT, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == MODEL  # rewritten to the base model, which the pod served
        assert not gateway.catalog.is_adapter(MODEL)
        lifecycle = gateway.core.director.begin(orjson.dumps(body), {}, CHAT)
        assert lifecycle.request.target_model == MODEL
        assert lifecycle.request.lora_adapter is None


async def test_adapter_the_pods_list_with_a_parent_is_lora_routed(tmp_path: Path) -> None:
    async with (
        SimFleet(
            pods=2, profile="tiny", time_scale=20.0, lora_modules=(ADAPTER,), log_level="critical"
        ) as fleet,
        serving(addresses(fleet), config=[models_config(tmp_path)]) as gateway,
        client_of(gateway) as client,
    ):

        async def catalog_knows() -> bool:
            return gateway.catalog.is_adapter(ADAPTER)

        await wait_until(catalog_knows, "the model catalog to read the pods' /v1/models")
        body = {**chat("hello adapter"), "model": ADAPTER}
        r = await client.post(CHAT, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == ADAPTER
        lifecycle = gateway.core.director.begin(orjson.dumps(body), {}, CHAT)
        assert lifecycle.request.target_model == ADAPTER
        assert lifecycle.request.lora_adapter == ADAPTER


# -- 8. cache_salt -------------------------------------------------------------------------------------------
async def test_requests_with_different_cache_salts_share_no_predicted_prefix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with (
        SimFleet(pods=2, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), strategy="PREFIX_CACHE") as gateway,
        client_of(gateway) as client,
    ):
        text = prompt(9, words=100)
        order = [("salt-a-1", "a"), ("salt-b-1", "b"), ("salt-a-2", "a"), ("salt-b-2", "b")]
        served = {}
        for request_id, salt in order:
            body = chat(text, max_tokens=2, cache_salt=salt)
            r = await client.post(CHAT, json=body, headers={"x-request-id": request_id})
            assert r.status_code == 200, r.text
            served[request_id] = r.headers[POD_HEADER]
        ratio = {}
        for rid, _ in order:
            ratio[rid] = float(log_field(await access_line(caplog, rid), "prefix_match_ratio"))
        assert ratio["salt-a-1"] == 0.0
        assert ratio["salt-b-1"] == 0.0  # the same prompt, another salt: nothing predicted cached
        assert ratio["salt-a-2"] == 1.0 and served["salt-a-2"] == served["salt-a-1"]
        assert ratio["salt-b-2"] == 1.0 and served["salt-b-2"] == served["salt-b-1"]
        # The decision without sending: a third salt matches nothing either.
        scorer = prefix_scorer(gateway)
        fresh = chat(text, max_tokens=2, cache_salt="c")
        assert scorer.index.match(chat_hashes(scorer, fresh)) == {}
        assert gateway.core.director.begin(orjson.dumps(fresh), {}, CHAT).result.prefix_match_ratio == 0.0


# -- 9. TTFT as the client sees it ---------------------------------------------------------------------------
def _has_content(line: str) -> bool:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    event = orjson.loads(line.removeprefix("data: "))
    return any(choice.get("delta", {}).get("content") for choice in event.get("choices", []))


async def test_gateway_ttft_metric_and_access_log_agree_with_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    histogram = "llm_d_epp_request_ttft_seconds"
    # time_scale 0.1: one engine step is ~20 ms of wall time, so TTFT is tens of milliseconds.
    async with (
        SimFleet(pods=1, profile="tiny", time_scale=0.1, log_level="critical") as fleet,
        serving(addresses(fleet)) as gateway,
        client_of(gateway) as client,
    ):
        assert (await client.post(CHAT, json=chat("warm up", max_tokens=1))).status_code == 200
        gaps: list[tuple[float, float]] = []  # |gateway - client|, |logged - client| per attempt
        for attempt in range(3):
            request_id = f"ttft-{attempt}"
            text = await metrics_text(client)
            sum_before = metric_value(text, f"{histogram}_sum")
            count_before = metric_value(text, f"{histogram}_count")
            body = chat(f"Tell me story number {attempt}", max_tokens=4, stream=True)
            client_ttft = None
            start = time.perf_counter()
            async with client.stream("POST", CHAT, json=body, headers={"x-request-id": request_id}) as r:
                assert r.status_code == 200
                lines = []
                async for line in r.aiter_lines():
                    if client_ttft is None and _has_content(line):
                        client_ttft = time.perf_counter() - start
                    lines.append(line)
            assert client_ttft is not None and lines[-2:] == ["data: [DONE]", ""]

            async def recorded(expected: float = count_before + 1) -> str | None:
                text = await metrics_text(client)  # the record step runs just after the reply's last byte
                return text if metric_value(text, f"{histogram}_count") == expected else None

            text = await wait_until(recorded, "the request to be recorded", deadline_s=2.0, interval=0.005)
            gateway_ttft = metric_value(text, f"{histogram}_sum") - sum_before
            logged_ttft = float(log_field(await access_line(caplog, request_id), "ttft_ms")) / 1000
            assert client_ttft > 0.010  # a measurable TTFT, not a rounding error
            gaps.append((abs(gateway_ttft - client_ttft), abs(logged_ttft - client_ttft)))
    # The best of three within 5 ms: a timing of the wrong event (the first byte, not the first content:
    # one engine step, ~20 ms here) misses on every attempt, while a busy machine delays a single one.
    assert min(g for g, _ in gaps) < 0.005 and min(lg for _, lg in gaps) < 0.005, gaps
    assert max(max(pair) for pair in gaps) < 0.1, gaps


# -- 10. a pod going silent mid-stream -----------------------------------------------------------------------
_METRICS = (
    b'vllm:num_requests_waiting{model_name="m"} 0\n'
    b'vllm:num_requests_running{model_name="m"} 0\n'
    b'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
)
_FIRST_EVENT = (
    b'data: {"object":"text_completion","choices":[{"index":0,"text":"Hello","finish_reason":null}]}'
)


class SilentAfterOneEvent:
    """A pod with fine metrics that goes silent after its first SSE event (until the caller leaves)."""

    def __init__(self) -> None:
        self.disconnected = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics":
            await send_bytes(send, 200, _METRICS, b"text/plain")
            return
        while (await receive()).get("more_body"):
            pass
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
        await send(start)
        await send({"type": "http.response.body", "body": _FIRST_EVENT + b"\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected.set()


async def test_pod_going_silent_mid_stream_ends_it_with_a_chunk_timeout_error_event() -> None:
    chunk_timeout_s = 0.5
    app = SilentAfterOneEvent()
    pod = EmbeddedServer(app, "127.0.0.1", 0, "critical")
    port = await pod.start()
    try:
        async with (
            serving(f"127.0.0.1:{port}", chunk_timeout_s=chunk_timeout_s) as gateway,
            client_of(gateway) as client,
        ):
            received: list[tuple[float, str]] = []
            start = time.perf_counter()
            async with client.stream("POST", "/v1/completions", json=completion("x", stream=True)) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line:
                        received.append((time.perf_counter() - start, line))
            lines = [line for _, line in received]
            assert lines[0] == _FIRST_EVENT.decode()  # what the pod sent got through at once
            error = orjson.loads(lines[1].removeprefix("data: "))["error"]
            assert error["code"] == "upstream_chunk_timeout" and error["type"] == "api_error"
            assert lines[2:] == ["data: [DONE]"]
            silence = received[1][0] - received[0][0]
            # Bounds wide enough for a loaded 2-core machine, yet far below the 300 s first-byte timeout
            # that a chunk timeout not applied would leave in force.
            assert chunk_timeout_s - 0.05 <= silence < chunk_timeout_s + 5.0, silence
            assert received[-1][0] < chunk_timeout_s + 10.0

            await asyncio.wait_for(app.disconnected.wait(), 2.0)  # the upstream connection was closed

            async def recorded() -> str | None:
                text = await metrics_text(client)
                aborted = metric_value(text, "epp_gateway_requests_total", result="upstream_aborted")
                return text if aborted == 1 else None

            text = await wait_until(recorded, "the request to be recorded", deadline_s=2.0, interval=0.005)
            assert metric_value(text, "epp_gateway_requests_total") == 1
            assert attempts_on(text, f"127.0.0.1:{port}", "chunk_timeout") == 1
            assert metric_value(text, "epp_retries_total") == 0  # bytes were out: nothing to retry
            assert gateway.datastore.states()[0].in_flight == 0
    finally:
        await pod.stop()


async def test_models_lists_exactly_the_inference_model_names_it_accepts(tmp_path: Path) -> None:
    async with (
        SimFleet(pods=1, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), config=[models_config(tmp_path)]) as gateway,
        client_of(gateway) as client,
    ):
        listed = (await client.get("/v1/models")).json()["data"]
        assert sorted(m["id"] for m in listed) == sorted(["chat-alias", ADAPTER])
        served = await client.post("/v1/chat/completions", json={**chat("hi"), "model": "chat-alias"})
        assert served.status_code == 200, served.text
        # The pods' own name is not one of the accepted names once InferenceModels are configured.
        assert_openai_error(
            await client.post("/v1/chat/completions", json=chat("hi")), 404, "model_not_found"
        )
