"""The static clusters of the pool path: the pods (override_host load balancing) and epp's gRPC server."""

from __future__ import annotations

from typing import Any

from epp.servers.extproc_messages import DESTINATION_HEADER, DESTINATION_METADATA_NAMESPACE

_T = "type.googleapis.com/envoy."


def socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _lb_endpoints(hosts: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"endpoint": {"address": socket(h, p)}} for h, p in hosts]


def _policy(name: str, type_name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "typed_extension_config": {"name": name, "typed_config": {"@type": _T + type_name, **(config or {})}}
    }


def seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"  # "0.05s", "910s" (never "1e+03s")


def pool_cluster(name: str, endpoints: list[tuple[str, int]], connect_timeout_s: float) -> dict[str, Any]:
    """The pool's pods; the host epp named in the request's metadata serves it (override_host)."""
    override_host = {
        "override_host_sources": [
            {"metadata": {"key": DESTINATION_METADATA_NAMESPACE, "path": [{"key": DESTINATION_HEADER}]}}
        ],
        "fallback_policy": {
            "policies": [
                _policy(
                    "envoy.load_balancing_policies.least_request",
                    "extensions.load_balancing_policies.least_request.v3.LeastRequest",
                )
            ]
        },
    }
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": seconds(connect_timeout_s),
        "load_balancing_policy": {
            "policies": [
                _policy(
                    "envoy.load_balancing_policies.override_host",
                    "extensions.load_balancing_policies.override_host.v3.OverrideHost",
                    override_host,
                )
            ]
        },
        # Envoy's default allows 3 concurrent retries per cluster: a dead pod's burst would overflow it.
        "circuit_breakers": {"thresholds": [_thresholds()]},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": _lb_endpoints(endpoints)}],
        },
    }


def _thresholds() -> dict[str, Any]:
    limit = 100_000
    return {
        "max_connections": limit,
        "max_pending_requests": limit,
        "max_requests": limit,
        "max_retries": limit,
    }


def extproc_cluster(name: str, address: tuple[str, int], connect_timeout_s: float) -> dict[str, Any]:
    """epp's gRPC server (ext_proc and the access log service), over HTTP/2."""
    http2 = {
        "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": seconds(connect_timeout_s),
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2},
        "circuit_breakers": {"thresholds": [_thresholds()]},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": _lb_endpoints([address])}],
        },
    }
