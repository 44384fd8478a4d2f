"""epp gateway with LLMProvider/LLMRoute/DestinationRule/VirtualService documents, over real sockets.

Providers are simulator pods behind a recording front (tests/traffic_support.py); dashscope's front is
HTTPS with a trustme CA, the test provider's pod is faulty (sim fault mode `error`). Provider hosts are
mapped to the fronts with --resolve. Outlier detection runs on an injected clock, so ejection times are
checked without sleeping.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme

from bench.sim.fleet import SimFleet
from gateway.server import Gateway, GatewayOptions, build_gateway
from tests.test_gateway_support import MODEL, assert_openai_error, metric_value
from tests.traffic_support import ProviderFront

DASH_KEY = "sk-dash-test-key-0123456789"
MOON_KEY = "sk-moon-test-key-9876543210"
TEST_KEY = "sk-asmtest-key-1357924680"
KEYS = (DASH_KEY, MOON_KEY, TEST_KEY)
CHAT_PATH = "/compatible-mode/v1/chat/completions"

CONFIG = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: dashscope-qwen}
spec:
  host: dashscope.aliyuncs.com
  path: /compatible-mode/v1/chat/completions
  tls: {caFile: CA_FILE}
  configs:
    defaultConfig: {openAIConfig: {model: qwen-1.8b-chat, stream: false, apiKey: '${DASHSCOPE_API_KEY}'}}
    routeSpecificConfigs:
      vip-route: {openAIConfig: {model: qwen-turbo, stream: false, apiKey: '${DASHSCOPE_API_KEY}'}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: dashscope-route}
spec:
  host: dashscope.aliyuncs.com
  rules:
  - name: vip-route
    matches: [{headers: {user-type: {exact: subscriber}}}]
    backendRefs: [{providerHost: dashscope.aliyuncs.com}]
  - backendRefs: [{providerHost: dashscope.aliyuncs.com}]
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: moonshot}
spec:
  host: api.moonshot.cn
  path: /v1/chat/completions
  configs:
    defaultConfig: {openAIConfig: {model: moonshot-v1-8k, apiKey: '${MOONSHOT_API_KEY}'}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: moonshot}
spec:
  host: api.moonshot.cn
  trafficPolicy: {tls: {mode: DISABLE}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: demo-llm-server}
spec:
  host: demo-llm-server
  rules:
  - name: migrate-rule
    backendRefs:
    - {providerHost: dashscope.aliyuncs.com, weight: 50}
    - {providerHost: api.moonshot.cn, weight: 50}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: asm-llm-provider-test}
spec:
  host: asm-llm-provider-test.com
  path: /compatible-mode/v1/chat/completions
  configs:
    defaultConfig: {openAIConfig: {model: test-model, stream: false, apiKey: TEST_KEY}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: asm-llm-provider-test}
spec:
  host: asm-llm-provider-test.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: DISABLE}
      outlierDetection:
        consecutive5xxErrors: 1
        interval: 1s
        baseEjectionTime: 10s
        maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: test-fallback-llm-vs}
spec:
  hosts: [asm-llm-provider-test.com]
  http:
  - name: fallback-route
    route:
    - destination: {host: asm-llm-provider-test.com, port: {number: 80}}
      fallback: {target: {host: dashscope.aliyuncs.com}}
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stack:
    gateway: Gateway
    client: httpx.AsyncClient
    dash: ProviderFront
    moon: ProviderFront
    broken: ProviderFront
    fleet: SimFleet
    clock: FakeClock

    async def chat(self, host: str, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        payload = (
            body if body is not None else {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        )
        return await self.client.post("/v1/chat/completions", json=payload, headers={"host": host, **headers})


@contextlib.asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    ca = trustme.CA()
    cert = ca.issue_cert("dashscope.aliyuncs.com")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ssl)
    config = tmp_path / "traffic.yaml"
    config.write_text(CONFIG.replace("CA_FILE", str(ca_file)).replace("TEST_KEY", TEST_KEY))
    async with SimFleet(pods=3, profile="tiny", time_scale=50.0) as fleet:
        fleet.pods[2].fault.set("error", 500)
        fronts = [ProviderFront(url, MODEL) for url in fleet.urls]
        fronts[0].ssl_context = server_ssl
        for front in fronts:
            await front.start()
        clock = FakeClock()
        resolve = (
            f"dashscope.aliyuncs.com:443=127.0.0.1:{fronts[0].port}",
            f"api.moonshot.cn:80=127.0.0.1:{fronts[1].port}",
            f"asm-llm-provider-test.com:80=127.0.0.1:{fronts[2].port}",
        )
        options = GatewayOptions(
            config_paths=[str(config)], port=0, seed=7, log_level="WARNING", resolve=resolve, clock=clock
        )
        env = {"DASHSCOPE_API_KEY": DASH_KEY, "MOONSHOT_API_KEY": MOON_KEY}
        gateway = build_gateway(options, env)
        await gateway.start()
        try:
            async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10.0) as client:
                yield Stack(gateway, client, fronts[0], fronts[1], fronts[2], fleet, clock)
        finally:
            await gateway.stop()
            for front in fronts:
                await front.stop()


def assert_no_keys(*texts: str) -> None:
    for text in texts:
        for key in KEYS:
            assert key not in text


async def test_header_route_sets_model_path_and_key_over_tls(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        plain = await s.chat("dashscope.aliyuncs.com", authorization="Bearer client-own-token")
        vip = await s.chat("dashscope.aliyuncs.com", None, **{"user-type": "subscriber"})
        assert plain.status_code == 200, plain.text
        assert vip.status_code == 200, vip.text
        assert plain.json()["choices"][0]["message"]["content"]
        first, second = s.dash.seen
        assert first.path == CHAT_PATH and first.body["model"] == "qwen-1.8b-chat"
        assert first.body["stream"] is False
        assert first.authorization == f"Bearer {DASH_KEY}"  # the client's own token is dropped
        assert second.body["model"] == "qwen-turbo"
        assert_no_keys(plain.text, vip.text)


async def test_stream_usage_is_counted_and_stripped(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
        response = await s.chat("api.moonshot.cn", body)
        assert response.status_code == 200, response.text
        assert s.moon.seen[0].body["stream_options"] == {"include_usage": True}
        assert s.moon.seen[0].body["model"] == "moonshot-v1-8k"
        events = [line for line in response.text.splitlines() if line.startswith("data: {")]
        assert events and all(orjson.loads(e[6:]).get("usage") is None for e in events)
        assert response.text.rstrip().endswith("data: [DONE]")
        metrics = (await s.client.get("/metrics")).text
        labels = {"server_address": "api.moonshot.cn", "gen_ai_provider_name": "api.moonshot.cn"}
        usage = "gen_ai_client_token_usage_sum"
        assert metric_value(metrics, usage, gen_ai_token_type="output", **labels) > 0
        assert metric_value(metrics, usage, gen_ai_token_type="input", **labels) > 0


async def test_weighted_route_splits_about_evenly(tmp_path: Path) -> None:
    n = 200
    async with stack(tmp_path) as s:
        for _ in range(n):
            assert (await s.chat("demo-llm-server")).status_code == 200
        to_dash, to_moon = len(s.dash.seen), len(s.moon.seen)
    assert to_dash + to_moon == n
    # Binomial(200, 0.5): sd ~7.1; 4.5 sd either side fails a fair split with probability < 1e-5.
    assert 68 <= to_dash <= 132, (to_dash, to_moon)
    assert {x.body["model"] for x in s.moon.seen} == {"moonshot-v1-8k"}
    assert {x.body["model"] for x in s.dash.seen} == {"qwen-1.8b-chat"}


async def test_faulty_provider_is_ejected_falls_back_and_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with stack(tmp_path) as s:
        host = "asm-llm-provider-test.com"
        first = await s.chat(host)  # 500 from the provider, ejected (consecutive5xxErrors 1), retried
        assert first.status_code == 200, first.text
        assert len(s.broken.seen) == 1 and len(s.dash.seen) == 1
        assert s.broken.seen[0].authorization == f"Bearer {TEST_KEY}"
        assert s.dash.seen[0].body["model"] == "qwen-1.8b-chat"  # the fallback's own config
        for _ in range(3):  # ejected: straight to the fallback
            assert (await s.chat(host)).status_code == 200
        assert len(s.broken.seen) == 1 and len(s.dash.seen) == 4

        s.clock.now += 10.5  # past baseEjectionTime (and a sweep): tried again, fails, ejected for 2x
        assert (await s.chat(host)).status_code == 200
        assert len(s.broken.seen) == 2
        s.clock.now += 10.5  # only half of the second ejection
        assert (await s.chat(host)).status_code == 200
        assert len(s.broken.seen) == 2
        s.clock.now += 10.0  # 20.5 s: the second ejection (2 x 10 s) is over
        s.fleet.pods[2].fault.clear()
        healed = await s.chat(host)
        assert healed.status_code == 200
        assert len(s.broken.seen) == 3 and s.broken.seen[2].body["model"] == "test-model"

        metrics = (await s.client.get("/metrics")).text
        assert metric_value(metrics, "epp_gateway_provider_ejections_total", provider=host) == 2
        assert metric_value(metrics, "epp_gateway_provider_fallbacks_total", reason="retry") == 2
        assert metric_value(metrics, "epp_gateway_provider_fallbacks_total", reason="ejected") == 4
        assert (
            metric_value(metrics, "epp_gateway_provider_errors_total", provider=host, error="http_5xx") == 2
        )
        bad = await s.chat(host, body=[1, 2])  # type: ignore[arg-type]
        error = assert_openai_error(bad, 400, "invalid_body")
        assert_no_keys(metrics, bad.text, str(error))
    assert_no_keys(*(r.getMessage() for r in caplog.records))
    assert any("rule=" in r.getMessage() and "provider=" in r.getMessage() for r in caplog.records)


async def test_unknown_host_goes_to_the_pool_path(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        response = await s.chat("localhost")  # not a traffic host, no model: the picker's 400
        assert_openai_error(response, 400)
        assert not s.dash.seen and not s.moon.seen
