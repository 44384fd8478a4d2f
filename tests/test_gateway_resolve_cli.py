"""`epp gateway --resolve` with providers, as users start it: the override resolver is built before the event
loop runs, and the provider host reaches the local address it is mapped to."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.compare.frontends import GatewayProcess
from bench.sim.process import SimProcess

pytestmark = pytest.mark.slow

PROVIDER = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: local}
spec:
  host: api.example.com
  path: /v1/chat/completions
  configs:
    defaultConfig:
      openAIConfig: {model: sim/tiny, stream: false, apiKey: test-key}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: local}
spec:
  host: api.example.com
  trafficPolicy: {tls: {mode: DISABLE}}
"""


def test_gateway_with_providers_and_resolve_overrides_starts_and_routes(tmp_path: Path) -> None:
    config = tmp_path / "providers.yaml"
    config.write_text(PROVIDER)
    with SimProcess(["--pods", "1", "--profile", "tiny", "--time-scale", "50"]) as sim:
        endpoint = sim.urls[0].removeprefix("http://")
        args = ["--endpoints", endpoint, "--config", str(config)]
        args += [
            "--resolve",
            f"api.example.com:80={endpoint}",
            "--resolve",
            f"api.example.com:443={endpoint}",
        ]
        with GatewayProcess(args) as gateway:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            r = httpx.post(
                f"{gateway.base_url}/v1/chat/completions",
                json=body,
                headers={"host": "api.example.com"},
                timeout=10,
                trust_env=False,
            )
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "sim/tiny"
