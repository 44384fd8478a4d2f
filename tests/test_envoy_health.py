"""Pod health behind a real Envoy: epp learns from Envoy's gRPC access log which pod served.

Envoy streams each request's outcome (status, upstream address) to `epp serve`'s AccessLogService; when the
address is not epp's pick (Envoy retried on a fallback epp listed), epp counts a failure of the pick for
outlier detection, and moves the prefix-index credit to the pod that served. The route also adds
`x-epp-endpoint` (the pod that answered) to responses, which the tests read. The pods are `epp sim`
subprocesses whose faults are set over HTTP (`/sim/fault`). Outcomes arrive batched, so checks poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import orjson
import pytest

from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.sim.process import SimProcess
from tests.test_envoy_support import addresses, chat_body, metric_sum, poll, served, sim_pods

pytestmark = pytest.mark.slow

SERVED_BY = "x-epp-endpoint"
BASE_EJECTION_S = 2.0
POOL_WITH_OUTLIER_DETECTION = f"""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata:
  name: pool
  annotations:
    outlier-detection.epp.io/consecutive5xxErrors: "2"
    outlier-detection.epp.io/interval: "200ms"
    outlier-detection.epp.io/baseEjectionTime: "{BASE_EJECTION_S:g}s"
    outlier-detection.epp.io/maxEjectionPercent: "50"
spec: {{targetPortNumber: 8000, selector: {{app: vllm}}}}
"""
PREFIX = "You are a careful assistant for the travel desk of a large company. " * 10


@pytest.fixture
def pool_config(tmp_path: Path) -> str:
    path = tmp_path / "pool.yaml"
    path.write_text(POOL_WITH_OUTLIER_DETECTION)
    return str(path)


@pytest.fixture
def sim3() -> Iterator[SimProcess]:
    with sim_pods(3) as sim:
        yield sim


def addr(url: str) -> str:
    """A pod's epp endpoint name (its address) from its URL."""
    return url.removeprefix("http://")


def set_fault(pod_url: str, mode: str, status: int = 503) -> None:
    response = httpx.post(f"{pod_url}/sim/fault", json={"mode": mode, "status": status}, timeout=5)
    assert response.status_code == 200 and response.json()["fault"]["mode"] == mode, response.text


def epp_metric(stack: EnvoyStack, name: str, **labels: str) -> float:
    return metric_sum(stack.epp_url, name, **labels)


def state_of(stack: EnvoyStack, endpoint: str) -> str:
    """The `state` label epp reports 1 for on `endpoint` (healthy, ejected, unreachable, ...)."""
    text = httpx.get(f"{stack.epp_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("epp_endpoint_state{") and f'endpoint="{endpoint}"' in line:
            labels, _, value = line.rpartition(" ")
            if float(value) == 1.0:
                return labels.split('state="')[1].split('"')[0]
    raise AssertionError(f"epp reports no state for {endpoint}")


def in_flight_by_pod(stack: EnvoyStack, endpoints: list[str]) -> dict[str, float]:
    return {e: epp_metric(stack, "epp_endpoint_in_flight_requests", endpoint=e) for e in endpoints}


def attempts(stack: EnvoyStack, endpoint: str, outcome: str | None = None) -> float:
    labels = {"endpoint": endpoint} if outcome is None else {"endpoint": endpoint, "outcome": outcome}
    return epp_metric(stack, "epp_endpoint_attempts_total", **labels)


@contextlib.contextmanager
def envoy_over(
    pods: Sequence[str],
    config: str,
    strategy: str,
    serve_args: tuple[str, ...] = ("--scrape-interval", "0.02"),
) -> Iterator[tuple[EnvoyStack, httpx.Client]]:
    """Envoy + `epp serve` (seeded) over `pods` with the outlier config, and a client of Envoy's listener."""
    options = StackOptions(config_paths=[config], strategy=strategy, serve_args=("--seed", "1", *serve_args))
    with (
        EnvoyStack(pods, options) as stack,
        httpx.Client(base_url=stack.base_url, timeout=30, trust_env=False) as client,
    ):
        yield stack, client


def ask(client: httpx.Client, content: str) -> httpx.Response:
    response = client.post("/v1/chat/completions", json=chat_body(content))
    assert response.status_code == 200, response.text
    return response


def test_erroring_pod_is_ejected_then_returns(sim3: SimProcess, pool_config: str) -> None:
    """A pod answering 500: clients never see it (Envoy retries on a fallback), epp ejects it after two
    failures, sends it nothing while ejected, and routes to it again once cleared and the ejection ends."""
    urls = sim3.urls
    bad, pods = addr(urls[0]), [addr(u) for u in urls]
    with envoy_over(addresses(sim3), pool_config, "ROUND_ROBIN") as (stack, client):
        set_fault(urls[0], "error", 500)
        for i in range(12):
            assert ask(client, f"before ejection {i}").headers[SERVED_BY] != bad
            if epp_metric(stack, "epp_endpoint_ejections_total", endpoint=bad):
                break
        ejected_at = time.monotonic()
        assert epp_metric(stack, "epp_endpoint_ejections_total", endpoint=bad, reason="consecutive_5xx") == 1
        # The failures that ejected it, from Envoy's access log: two, or one more picked while the second's
        # entry was still in Envoy's batch.
        poll(lambda: attempts(stack, bad, "fallback") >= 2, "the fallbacks in Envoy's access log")
        time.sleep(0.2)  # > the access log's flush interval: every entry is in
        tried = attempts(stack, bad)
        assert tried == attempts(stack, bad, "fallback") and 2 <= tried <= 3
        assert state_of(stack, bad) == "ejected"
        assert served(urls)[0] == 0

        before = served(urls)
        for i in range(6):
            assert ask(client, f"while ejected {i}").headers[SERVED_BY] != bad
        assert time.monotonic() - ejected_at < BASE_EJECTION_S  # all of them ran inside the ejection
        after = served(urls)
        assert after[0] == before[0] == 0
        assert sum(after) - sum(before) == 6
        time.sleep(0.2)
        assert attempts(stack, bad) == tried  # not even tried

        set_fault(urls[0], "none")
        poll(lambda: state_of(stack, bad) == "healthy", "the ejected pod to return", deadline_s=10)
        assert time.monotonic() - ejected_at >= BASE_EJECTION_S - 0.3
        for i in range(6):
            ask(client, f"after return {i}")
        assert served(urls)[0] >= 1
        assert attempts(stack, bad, "ok") >= 1
        poll(lambda: set(in_flight_by_pod(stack, pods).values()) == {0.0}, "in-flight counts back to 0")


def test_hung_pod_costs_one_idle_timeout_and_is_ejected(sim3: SimProcess, pool_config: str) -> None:
    """A pod that never answers: each request picked for it waits one per-try idle timeout, then Envoy
    serves it from a fallback; concurrent clients all get 200 in time, and epp ejects the pod."""
    idle_timeout_s = 1.0
    urls = sim3.urls
    hung, pods = addr(urls[0]), [addr(u) for u in urls]
    options = StackOptions(
        config_paths=[pool_config],
        strategy="ROUND_ROBIN",
        upstream_idle_timeout_s=idle_timeout_s,
        serve_args=("--seed", "1", "--scrape-interval", "0.02"),
    )
    with EnvoyStack(addresses(sim3), options) as stack:
        set_fault(urls[0], "hang")
        results = asyncio.run(_concurrent_chats(stack.base_url, 15))
        for status, elapsed_s, served_by in results:
            assert status == 200
            assert elapsed_s < idle_timeout_s + 2.0
            assert served_by != hung
        slow = sum(1 for _, elapsed_s, _ in results if elapsed_s >= idle_timeout_s)
        assert slow >= 2  # round robin gave the hung pod its share: they waited for the idle timeout
        poll(lambda: attempts(stack, hung, "fallback") == slow, "every fallback in Envoy's access log")
        assert epp_metric(stack, "epp_endpoint_ejections_total", endpoint=hung) == 1
        assert state_of(stack, hung) == "ejected"
        assert served(urls)[0] == 0
        poll(lambda: set(in_flight_by_pod(stack, pods).values()) == {0.0}, "in-flight counts back to 0")
        set_fault(urls[0], "none")  # let the sim drop whatever it still holds


async def _concurrent_chats(base_url: str, n: int) -> list[tuple[int, float, str]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:

        async def one(i: int) -> tuple[int, float, str]:
            start = time.monotonic()
            response = await client.post("/v1/chat/completions", json=chat_body(f"concurrent {i}"))
            return response.status_code, time.monotonic() - start, response.headers.get(SERVED_BY, "")

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_killed_prefix_pod_between_scrapes_costs_no_request(pool_config: str) -> None:
    """PREFIX_CACHE: the pod holding a shared prefix dies and epp has not scraped since. Its requests are
    served from the fallbacks epp listed, nothing stays in flight, and the prefix index credits the pod
    that served (so affinity moves there, not to nowhere)."""
    sims = [sim_pods(1) for _ in range(3)]
    try:
        for sim in sims:
            sim.start()
        # Scrapes 10 s apart: the kill and the requests after it all fall between two scrapes.
        slow_scrapes = ("--scrape-interval", "10", "--staleness", "60")
        with envoy_over(addresses(*sims), pool_config, "PREFIX_CACHE", slow_scrapes) as (stack, client):
            owners = {ask(client, f"{PREFIX} Question {i}: where to?").headers[SERVED_BY] for i in range(4)}
            assert len(owners) == 1, owners  # affinity: one pod holds the prefix
            owner = owners.pop()
            victim = next(s for s in sims if addr(s.urls[0]) == owner)
            others = [addr(s.urls[0]) for s in sims if s is not victim]
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=5)
            assert state_of(stack, owner) == "healthy"  # epp has not noticed: no scrape since

            first = ask(client, f"{PREFIX} Question 100: and now?").headers[SERVED_BY]
            assert first in others
            # epp picked the dead pod; Envoy fell back, and its access log tells epp so (batched: poll).
            poll(lambda: attempts(stack, owner, "fallback") == 1, "the fallback in Envoy's access log")
            # No other request with this prefix went to `first` before: only the fallback credited it.
            pick = httpx.post(
                f"{stack.epp_url}/pick?path=/v1/chat/completions",
                json=chat_body(f"{PREFIX} Question 101: still there?"),
                timeout=5,
            ).json()
            assert pick["scores"]["prefix-cache-scorer"][first] > 0.5, pick["scores"]

            later = [
                ask(client, f"{PREFIX} Question {i}: again?").headers[SERVED_BY] for i in range(102, 106)
            ]
            assert set(later) <= set(others)
            poll(
                lambda: set(in_flight_by_pod(stack, [owner, *others]).values()) == {0.0},
                "in-flight counts back to 0",
            )
            assert attempts(stack, owner, "ok") == 4  # the affinity requests, before the kill
            assert attempts(stack, owner, "fallback") >= 1
            assert sum(attempts(stack, o, "ok") for o in others) == 5
    finally:
        for sim in sims:
            sim.stop()


def test_the_outcome_of_a_stream_follows_the_pod_that_served_it(pool_config: str) -> None:
    """The pick closes connections without a byte; Envoy streams the answer from a fallback. The request
    counts in flight once while it runs (on the pick: Envoy tells epp who served only when it is over); then
    the pick is charged a fallback failure and the serving pod the answer."""
    with sim_pods(3, time_scale=0.25) as sim:
        urls = sim.urls
        pods = [addr(u) for u in urls]
        with envoy_over(addresses(sim), pool_config, "PREFIX_CACHE") as (stack, client):
            owner = ask(client, f"{PREFIX} Tell me a story.").headers[SERVED_BY]
            poll(lambda: in_flight_by_pod(stack, pods)[owner] == 0, "the first request to end")
            poll(lambda: attempts(stack, owner, "ok") == 1, "the first outcome")
            set_fault(f"http://{owner}", "close")
            body = chat_body(f"{PREFIX} Tell me a long story.", max_tokens=200, stream=True)
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                serving = response.headers[SERVED_BY]
                assert serving != owner
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert orjson.loads(first.removeprefix("data: "))["object"] == "chat.completion.chunk"
                during = in_flight_by_pod(stack, pods)
                rest = [line for line in lines if line.startswith("data: ")]
            assert sum(during.values()) == 1, during  # counted once, not on every pod Envoy tried
            assert rest[-1] == "data: [DONE]" and len(rest) > 100
            poll(lambda: set(in_flight_by_pod(stack, pods).values()) == {0.0}, "in-flight counts back to 0")
            poll(lambda: attempts(stack, owner, "fallback") == 1, "the pick charged with the fallback")
            poll(lambda: attempts(stack, serving, "ok") == 1, "the serving pod credited with the answer")
            pick = httpx.post(
                f"{stack.epp_url}/pick?path=/v1/chat/completions",
                json=chat_body(f"{PREFIX} Tell me a long story, again."),
                timeout=5,
            ).json()
            assert pick["scores"]["prefix-cache-scorer"][serving] > 0.5, pick["scores"]
