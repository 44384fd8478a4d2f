"""The same two providers, 50/50 weights, ejection and B -> A fallback, as LiteLLM and as epp documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

MODEL = "sim/tiny"  # what the simulated pods serve
CLIENT_MODEL = "bench"  # the name clients ask the gateways for
ROUTE_HOST = "bench-route.local"  # epp: the LLMRoute's host (clients' Host header)
PROVIDER_HOSTS = ("provider-a.bench", "provider-b.bench")
PROVIDER_PORT = 80  # plain HTTP (DestinationRule tls mode DISABLE)


@dataclass(frozen=True, slots=True)
class Policy:
    """Outlier detection / cooldown both systems get (Istio field names)."""

    consecutive_5xx: int = 1
    base_ejection_s: float = 5.0
    interval_s: float = 1.0


def litellm_config(provider_urls: tuple[str, str], policy: Policy) -> str:
    """LiteLLM proxy YAML: group `bench` = A and B at equal weight, cooldown after the first failure,
    no same-group retry, fallback to group `bench-fallback` (A only), the closest match of epp's setup."""

    def deployment(name: str, url: str, tag: str) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{MODEL}",
                "api_base": f"{url}/v1",
                "api_key": "bench-key",
                "weight": 1,
            },
            "model_info": {"id": tag},
        }

    a, b = provider_urls
    doc = {
        "model_list": [
            deployment(CLIENT_MODEL, a, "provider-a"),
            deployment(CLIENT_MODEL, b, "provider-b"),
            deployment(f"{CLIENT_MODEL}-fallback", a, "provider-a-fallback"),
        ],
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "allowed_fails": policy.consecutive_5xx - 1,  # cooled down once fails exceed this
            "cooldown_time": policy.base_ejection_s,
            "num_retries": 0,
            "fallbacks": [{CLIENT_MODEL: [f"{CLIENT_MODEL}-fallback"]}],
        },
        "litellm_settings": {"telemetry": False, "drop_params": True},
        # No client auth, as on epp's side (a master key without a database adds a key check per request).
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def epp_traffic_config(policy: Policy) -> str:
    """epp traffic documents (ASM LLMProvider/LLMRoute, Istio DestinationRule/VirtualService)."""
    a, b = PROVIDER_HOSTS
    docs: list[dict[str, Any]] = []
    for host in PROVIDER_HOSTS:
        docs.append(
            {
                "apiVersion": "istio.alibabacloud.com/v1beta1",
                "kind": "LLMProvider",
                "metadata": {"name": host.split(".")[0]},
                "spec": {
                    "host": host,
                    "path": "/v1/chat/completions",
                    "configs": {
                        "defaultConfig": {
                            "openAIConfig": {"model": MODEL, "stream": False, "apiKey": "bench-key"}
                        }
                    },
                },
            }
        )
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1beta1",
                "kind": "DestinationRule",
                "metadata": {"name": host.split(".")[0]},
                "spec": {
                    "host": host,
                    "trafficPolicy": {
                        "tls": {"mode": "DISABLE"},
                        "outlierDetection": {
                            "consecutive5xxErrors": policy.consecutive_5xx,
                            "interval": f"{policy.interval_s:g}s",
                            "baseEjectionTime": f"{policy.base_ejection_s:g}s",
                            "maxEjectionPercent": 100,
                        },
                    },
                },
            }
        )
    docs.append(
        {
            "apiVersion": "istio.alibabacloud.com/v1beta1",
            "kind": "LLMRoute",
            "metadata": {"name": "bench-route"},
            "spec": {
                "host": ROUTE_HOST,
                "rules": [
                    {
                        "name": "split",
                        "backendRefs": [{"providerHost": a, "weight": 50}, {"providerHost": b, "weight": 50}],
                    }
                ],
            },
        }
    )
    docs.append(
        {
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "VirtualService",
            "metadata": {"name": "provider-b-fallback"},
            "spec": {
                "hosts": [b],
                "http": [
                    {
                        "name": "fallback-route",
                        "route": [
                            {
                                "destination": {"host": b, "port": {"number": PROVIDER_PORT}},
                                "fallback": {"target": {"host": a}},
                            }
                        ],
                    }
                ],
            },
        }
    )
    return yaml.safe_dump_all(docs, sort_keys=False)


def epp_resolve_flags(tap_ports: tuple[int, int]) -> list[str]:
    """`--resolve host:80=127.0.0.1:PORT` for each provider host."""
    flags: list[str] = []
    for host, port in zip(PROVIDER_HOSTS, tap_ports, strict=True):
        flags += ["--resolve", f"{host}:{PROVIDER_PORT}=127.0.0.1:{port}"]
    return flags
