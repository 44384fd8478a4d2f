"""More of `epp gateway`'s traffic management over real sockets: a route splitting between the local pool and
a provider, fallback on connect errors and hangs, maxEjectionPercent/minHealthPercent over a route's
backends, per-route timeout and retries, passClientCredentials.

Providers are simulator pods behind recording fronts (tests/traffic_support.py), plain HTTP (DestinationRule
`tls.mode: DISABLE`) and mapped to the fronts with --resolve; outlier detection runs on an injected clock.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from bench.sim.fleet import SimFleet
from epp.config.traffic.build import build_traffic
from epp.config.traffic.config import TrafficConfigError
from gateway.server import Gateway
from gateway.upstream import ENDPOINT_HEADER
from tests.test_gateway_support import MODEL, assert_openai_error, metric_value, serving
from tests.test_sim_support import prompt
from tests.traffic_support import ProviderFront

KEY = "sk-more-test-key-24680"
Behaviour = Literal["ok", "error", "hang", "closed"]
POOL = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: local-pool}
spec:
  targetPortNumber: 8000
  selector: {app: vllm}
  extensionRef: {name: epp}
"""


def provider(host: str, **extra: Any) -> str:
    """An LLMProvider plus a DestinationRule (plain HTTP; `outlier` becomes its outlierDetection)."""
    outlier = extra.pop("outlier", None)
    spec_extra = "".join(f"  {k}: {v}\n" for k, v in extra.items())
    rule = f"  trafficPolicy: {{tls: {{mode: DISABLE}}{', outlierDetection: ' + outlier if outlier else ''}}}"
    return f"""---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: {host.split(".")[0]}}}
spec:
  host: {host}
  path: /v1/chat/completions
  configs: {{defaultConfig: {{openAIConfig: {{model: m-{host.split(".")[0]}, apiKey: {KEY}}}}}}}
{spec_extra}---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {host.split(".")[0]}}}
spec:
  host: {host}
{rule}
"""


def fallback(host: str, to: str) -> str:
    return f"""---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: fb-{host.split(".")[0]}}}
spec:
  hosts: [{host}]
  http: [{{route: [{{destination: {{host: {host}}}, fallback: {{target: {{host: {to}}}}}}}]}}]
"""


def route(host: str, rule: str) -> str:
    return f"""---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: {host.split(".")[0]}}}
spec:
  host: {host}
  rules:
  - {rule}
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    gateway: Gateway
    client: httpx.AsyncClient
    fronts: dict[str, ProviderFront]
    pool: list[str]  # the pool pods' addresses (host:port)
    clock: FakeClock

    async def chat(self, host: str, text: str = "hi", **headers: str) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 2}
        return await self.client.post("/v1/chat/completions", json=body, headers={"host": host, **headers})

    async def metric(self, name: str, **labels: str) -> float:
        return metric_value((await self.client.get("/metrics")).text, name, **labels)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connections are refused


@contextlib.asynccontextmanager
async def traffic(
    tmp_path: Path, config: str, providers: dict[str, Behaviour], pool_pods: int = 0, **options: Any
) -> AsyncIterator[Env]:
    """A gateway over `pool_pods` simulator pods and one front per provider host behaving as given."""
    path = tmp_path / "traffic.yaml"
    path.write_text(config)
    served = [h for h, b in providers.items() if b != "closed"]
    async with SimFleet(pods=pool_pods + len(served), profile="tiny", time_scale=50.0) as fleet:
        fronts: dict[str, ProviderFront] = {}
        resolve = []
        for i, host in enumerate(served, start=pool_pods):
            front = fronts[host] = ProviderFront(fleet.urls[i], MODEL)
            if providers[host] == "error":
                front.fail_with = 500
            elif providers[host] == "hang":
                fleet.pods[i].fault.set("hang")
            await front.start()
            resolve.append(f"{host}:80=127.0.0.1:{front.port}")
        resolve += [f"{h}:80=127.0.0.1:{_closed_port()}" for h, b in providers.items() if b == "closed"]
        pool = [u.removeprefix("http://") for u in fleet.urls[:pool_pods]]
        clock = FakeClock()
        defaults: dict[str, Any] = {"resolve": tuple(resolve), "clock": clock, "seed": 11}
        try:
            async with (
                serving(",".join(pool), [str(path)], **{**defaults, **options}) as gateway,
                httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10.0) as client,
            ):
                yield Env(gateway, client, fronts, pool, clock)
        finally:
            for pod in fleet.pods:
                pod.fault.clear()  # hung requests finish, so the fronts stop promptly
            for front in fronts.values():
                await front.stop()


async def test_route_splits_90_10_between_the_local_pool_and_a_provider(tmp_path: Path) -> None:
    config = POOL + provider("ext.example.com")
    config += route(
        "mix.example.com",
        "backendRefs: [{inferencePool: local-pool, weight: 90}, {providerHost: ext.example.com, weight: 10}]",
    )
    n = 200
    shared = prompt(1, words=120)
    async with traffic(
        tmp_path, config, {"ext.example.com": "ok"}, pool_pods=3, strategy="PREFIX_CACHE"
    ) as env:
        pods = []
        for i in range(n):
            r = await env.chat("mix.example.com", f"{shared}\nQuestion {i}?")
            assert r.status_code == 200, r.text
            endpoint = r.headers[ENDPOINT_HEADER.decode()]
            if endpoint != "ext.example.com":
                pods.append(endpoint)
        to_ext = len(env.fronts["ext.example.com"].seen)
        assert {s.body["model"] for s in env.fronts["ext.example.com"].seen} == {"m-ext"}
        pool = env.pool
    assert to_ext + len(pods) == n
    # Binomial(200, 0.1): mean 20, sd ~4.2; 4.5 sd either side fails a correct split with p < 1e-5.
    assert 1 <= to_ext <= 39, to_ext
    assert set(pods) <= set(pool)
    assert len(set(pods)) == 1, set(pods)  # the picker's prefix routing keeps the shared prompt on one pod


async def test_connect_error_and_first_byte_timeout_fall_back_without_client_error(tmp_path: Path) -> None:
    config = provider("ext.example.com") + provider("dead.example.com") + provider("slow.example.com")
    config += fallback("dead.example.com", "ext.example.com") + fallback(
        "slow.example.com", "ext.example.com"
    )
    behaviour: dict[str, Behaviour] = {"ext.example.com": "ok", "dead.example.com": "closed"}
    behaviour["slow.example.com"] = "hang"
    async with traffic(tmp_path, config, behaviour, first_byte_timeout_s=0.5) as env:
        dead = await env.chat("dead.example.com")
        assert dead.status_code == 200, dead.text
        assert dead.headers[ENDPOINT_HEADER.decode()] == "ext.example.com"
        started = time.perf_counter()
        slow = await env.chat("slow.example.com")
        assert slow.status_code == 200, slow.text
        assert slow.headers[ENDPOINT_HEADER.decode()] == "ext.example.com"
        assert 0.4 < time.perf_counter() - started < 5.0
        assert len(env.fronts["slow.example.com"].seen) == 1  # it got the request, then hung
        assert len(env.fronts["ext.example.com"].seen) == 2
        assert {s.body["model"] for s in env.fronts["ext.example.com"].seen} == {"m-ext"}
        errors = "epp_gateway_provider_errors_total"
        assert await env.metric(errors, provider="dead.example.com", error="connect_failed") == 1
        assert await env.metric(errors, provider="slow.example.com", error="first_byte_timeout") == 1
        assert await env.metric("epp_gateway_provider_fallbacks_total", reason="retry") == 2


PAIR = "backendRefs: [{providerHost: a.example.com, weight: 50}, {providerHost: b.example.com, weight: 50}]"


async def test_max_ejection_percent_acts_on_the_routes_backends(tmp_path: Path) -> None:
    outlier = "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}"
    config = provider("a.example.com", outlier=outlier) + provider("b.example.com", outlier=outlier)
    config += route("pair.example.com", PAIR)
    async with traffic(tmp_path, config, {"a.example.com": "error", "b.example.com": "error"}) as env:
        for _ in range(6):
            r = await env.chat("pair.example.com")
            assert r.status_code == 500  # both broken: the second's 5xx is relayed
        assert env.fronts["a.example.com"].seen and env.fronts["b.example.com"].seen
        service = "a.example.com,b.example.com"
        assert await env.metric("epp_gateway_provider_ejections_total", service=service) == 1
        assert await env.metric("epp_gateway_provider_ejected", service=service) == 1
        # The one ejected is drawn no more: every later request went first to the other one.
        health = env.gateway.providers
        assert health is not None
        out = [
            h
            for h in ("a.example.com", "b.example.com")
            if health.health.is_ejected(("a.example.com", "b.example.com"), h, 80)
        ]
        assert len(out) == 1
        assert len(env.fronts[out[0]].seen) == 1


@pytest.mark.parametrize("min_health", [0, 60])
async def test_min_health_percent_ignores_ejection_below_it(tmp_path: Path, min_health: int) -> None:
    outlier = "{consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100, "
    outlier += f"minHealthPercent: {min_health}}}"
    config = provider("a.example.com", outlier=outlier) + provider("b.example.com", outlier=outlier)
    config += route("pair.example.com", PAIR)
    async with traffic(tmp_path, config, {"a.example.com": "error", "b.example.com": "ok"}) as env:
        for _ in range(20):
            r = await env.chat("pair.example.com")
            assert r.status_code == 200, r.text  # a's failure is retried on b
        to_a = len(env.fronts["a.example.com"].seen)
    if min_health == 0:
        assert to_a == 1  # ejected after its first 5xx, drawn no more
    else:
        assert to_a > 1  # 1 of 2 healthy is 50% < 60%: the ejection is ignored, a keeps its share


async def test_route_timeout_is_a_504_and_retries_0_relays_the_5xx(tmp_path: Path) -> None:
    config = provider("ext.example.com") + provider("slow.example.com") + provider("bad.example.com")
    config += fallback("slow.example.com", "ext.example.com") + fallback("bad.example.com", "ext.example.com")
    config += route("t.example.com", "{timeout: 300ms, backendRefs: [{providerHost: slow.example.com}]}")
    config += route("r0.example.com", "{retries: 0, backendRefs: [{providerHost: bad.example.com}]}")
    config += route("r1.example.com", "{backendRefs: [{providerHost: bad.example.com}]}")
    behaviour: dict[str, Behaviour] = {"ext.example.com": "ok", "slow.example.com": "hang"}
    behaviour["bad.example.com"] = "error"
    async with traffic(tmp_path, config, behaviour, first_byte_timeout_s=5.0) as env:
        started = time.perf_counter()
        timed_out = await env.chat("t.example.com")
        assert time.perf_counter() - started < 2.0
        error = assert_openai_error(timed_out, 504, "timeout")
        assert "timeout" in error["message"]
        assert not env.fronts["ext.example.com"].seen  # the deadline covers the retries too
        no_retry = await env.chat("r0.example.com")
        assert no_retry.status_code == 500
        assert not env.fronts["ext.example.com"].seen
        retried = await env.chat("r1.example.com")  # the default budget: one retry, on the fallback
        assert retried.status_code == 200, retried.text
        assert len(env.fronts["ext.example.com"].seen) == 1
        errors = "epp_gateway_provider_errors_total"
        assert await env.metric(errors, provider="slow.example.com", error="first_byte_timeout") == 1


async def test_pass_client_credentials_forwards_the_clients_authorization(tmp_path: Path) -> None:
    config = provider("pass.example.com", passClientCredentials="true") + provider("key.example.com")
    async with traffic(tmp_path, config, {"pass.example.com": "ok", "key.example.com": "ok"}) as env:
        own = await env.chat("pass.example.com", authorization="Bearer client-token", **{"x-api-key": "xk"})
        bare = await env.chat("pass.example.com")
        dropped = await env.chat("key.example.com", authorization="Bearer client-token")
        assert own.status_code == bare.status_code == dropped.status_code == 200
        first, second = env.fronts["pass.example.com"].seen
        assert first.authorization == "Bearer client-token"
        assert second.authorization == f"Bearer {KEY}"  # no client credentials: the key fills in
        assert env.fronts["key.example.com"].seen[0].authorization == f"Bearer {KEY}"


def _rule_docs(rule: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    doc = {
        "apiVersion": "istio.alibabacloud.com/v1beta1",
        "kind": "LLMRoute",
        "metadata": {"name": "r"},
        "spec": {"host": "r.example.com", "rules": [rule]},
    }
    return [("t.yaml", 1, doc)]


@pytest.mark.parametrize(
    ("rule", "field", "reason"),
    [
        ({"timeout": "0s", "backendRefs": [{"inferencePool": "p"}]}, "timeout", "must be > 0"),
        ({"retries": 11, "backendRefs": [{"inferencePool": "p"}]}, "retries", "less than or equal to 10"),
        ({"retries": 1, "backendRefs": [{"inferencePool": "p"}]}, "retries", "only InferencePools"),
    ],
)
def test_bad_timeout_or_retries_fail_at_load(rule: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(TrafficConfigError) as caught:
        build_traffic(_rule_docs(rule), {}, pools={"p"})
    text = str(caught.value)
    assert field in text and reason in text, text
