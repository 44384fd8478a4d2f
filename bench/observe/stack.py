"""A simulated fleet, `epp gateway` in front of it (pool traffic, two providers, the response cache on Redis)
and a Prometheus scraping all of them, in the current event loop.

The providers are simulator pods too, reached through `--resolve` overrides: `good.provider.test` answers,
`broken.provider.test` answers 500 (outlier detection ejects it for a second at a time and its VirtualService
falls back to the good one). Requests to the providers' route host `chat.route.test` go through the response
cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.observe.config import local_config
from bench.observe.prometheus import PrometheusProcess
from bench.redis_process import RedisProcess
from bench.sim.fleet import SimFleet
from gateway.server import Gateway, GatewayOptions, build_gateway

MODEL = "sim/tiny"
ROUTE_HOST = "chat.route.test"  # an LLMRoute over the good provider, cached
GOOD_HOST = "good.provider.test"
BROKEN_HOST = "broken.provider.test"  # always 500; ejected, then straight to its fallback

POOL = "observe"
# Pod outlier detection fast enough to see within the run: one 5xx ejects a pod for 1 s (then 2 s, ...).
CONFIG = f"""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata:
  name: {POOL}
  annotations:
    outlier-detection.epp.io/consecutive5xxErrors: "1"
    outlier-detection.epp.io/interval: "200ms"
    outlier-detection.epp.io/baseEjectionTime: "1s"
    outlier-detection.epp.io/maxEjectionPercent: "50"
spec: {{targetPortNumber: 8000, selector: {{app: vllm}}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: good}}
spec:
  host: {GOOD_HOST}
  path: /v1/chat/completions
  configs:
    defaultConfig: {{openAIConfig: {{model: {MODEL}, apiKey: sk-observe-good}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: good}}
spec:
  host: {GOOD_HOST}
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: broken}}
spec:
  host: {BROKEN_HOST}
  path: /v1/chat/completions
  configs:
    defaultConfig: {{openAIConfig: {{model: {MODEL}, apiKey: sk-observe-broken}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: broken}}
spec:
  host: {BROKEN_HOST}
  trafficPolicy:
    tls: {{mode: DISABLE}}
    outlierDetection:
      {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: broken-fallback}}
spec:
  hosts: [{BROKEN_HOST}]
  http:
  - name: fallback-route
    route:
    - destination: {{host: {BROKEN_HOST}, port: {{number: 80}}}}
      fallback: {{target: {{host: {GOOD_HOST}}}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: chat-route}}
spec:
  host: {ROUTE_HOST}
  rules:
  - name: main
    backendRefs: [{{providerHost: {GOOD_HOST}}}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: llm-cache}}
spec:
  failStrategy: FAIL_OPEN
  pluginConfig:
    host_match: "{ROUTE_HOST.replace(".", "[.]")}"
    path_match: ".*"
    service: cache.invalid
    port: "80"
"""


@dataclass
class ObservedStack:
    pool: SimFleet
    providers: SimFleet
    gateway: Gateway
    redis: RedisProcess
    prometheus: PrometheusProcess
    epp_targets: dict[str, str]  # host:port -> component (gateway, picker)
    vllm_targets: list[str]
    interval_s: float

    def add_epp_target(self, address: str, component: str) -> None:
        """Scrape one more epp process (e.g. an `epp serve` started after the stack): reloads Prometheus."""
        self.epp_targets[address] = component
        config = local_config(self.epp_targets, self.vllm_targets, self.interval_s)
        self.prometheus.reload(config, expect=address)

    @property
    def scrape_targets(self) -> list[str]:
        return [*self.epp_targets, *self.vllm_targets]


def _write_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "traffic.yaml"
    path.write_text(CONFIG)
    return path


def _address(url: str) -> str:
    return url.split("://", 1)[-1]


@contextlib.asynccontextmanager
async def observed_stack(
    folder: Path,
    pods: int = 3,
    interval_s: float = 1.0,
    time_scale: float = 20.0,
    log_level: str = "WARNING",
) -> AsyncIterator[ObservedStack]:
    """Everything started in `folder` (Prometheus's TSDB and config, Redis's data), stopped on exit."""
    config = _write_config(folder)
    redis = RedisProcess(folder)
    redis.start()
    try:
        async with (
            SimFleet(pods=pods, profile="tiny", time_scale=time_scale, log_level="critical") as pool,
            SimFleet(
                pods=2, profile="tiny", time_scale=time_scale, seed=100, log_level="critical"
            ) as providers,
        ):
            providers.pods[1].fault.set("error", 500)
            options = GatewayOptions(
                endpoints=",".join(_address(u) for u in pool.urls),
                config_paths=[str(config)],
                port=0,
                scrape_interval_s=min(interval_s, 0.5),
                seed=1,
                log_level=log_level,
                cache_service="in-process",
                resolve=(
                    f"{GOOD_HOST}:80={_address(providers.urls[0])}",
                    f"{BROKEN_HOST}:80={_address(providers.urls[1])}",
                ),
            )
            gateway = build_gateway(options, {"REDIS_ADDRESS": redis.address})
            await gateway.start()
            try:
                epp_targets = {_address(gateway.base_url): "gateway"}
                vllm_targets = [_address(u) for u in [*pool.urls, *providers.urls]]
                prom = PrometheusProcess(local_config(epp_targets, vllm_targets, interval_s), folder / "prom")
                prom.start()
                try:
                    yield ObservedStack(
                        pool, providers, gateway, redis, prom, epp_targets, vllm_targets, interval_s
                    )
                finally:
                    prom.stop()
            finally:
                await gateway.stop()
    finally:
        redis.stop()
