"""Several `epp serve` replicas behind one Envoy: the ext_proc cluster over all of them, health-checked, and
one access log per replica.

Envoy opens one ext_proc stream per request and balances the streams over the healthy replicas (round
robin), so each replica routes a share of the requests. A replica that stops answering its health check (its
`/readyz` on the HTTP port when given, else a TCP connect to the gRPC port) gets no new stream; the panic
threshold is 0, so a replica known down is never picked even when most are down.

The access log is what ends a routed request's in-flight count in the replica that routed it
(epp/servers/outcomes.py), so every replica must hear every entry: an access log over the balanced cluster
would send each Envoy worker's entries to one replica only, and the others would count their requests in
flight until a TTL. Each replica gets its own single-host cluster and access logger; a replica ignores the
entries of requests it did not route.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from epp.envoy_gateway.clusters import seconds, socket

ALS_CLUSTER_PREFIX = "epp_als_"  # + the replica's index


class ReplicaError(ValueError):
    """An --epp value that is not HOST:GRPC_PORT[/HTTP_PORT]."""


@dataclass(frozen=True)
class ExtProcReplica:
    host: str  # an IP address
    grpc_port: int
    http_port: int | None = None  # health checked at /readyz when given

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        tail = "" if self.http_port is None else f"/{self.http_port}"
        return f"{host}:{self.grpc_port}{tail}"


def parse_replica(text: str) -> ExtProcReplica:
    """`10.0.0.5:9002`, `10.0.0.5:9002/9003` or `[fd00::5]:9002/9003`; ReplicaError naming the value."""
    address, _, http = text.partition("/")
    host, sep, grpc = address.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        ports = [int(grpc), *([int(http)] if http else [])]
    except ValueError:
        raise ReplicaError(
            f"--epp {text!r}: want IP:GRPC_PORT or IP:GRPC_PORT/HTTP_PORT (an IP address, not a name)"
        ) from None
    if not sep or not all(0 < p < 65536 for p in ports):
        raise ReplicaError(f"--epp {text!r}: ports must be 1..65535")
    return ExtProcReplica(host, ports[0], ports[1] if http else None)


def _health_check(replicas: tuple[ExtProcReplica, ...], interval_s: float) -> dict[str, Any]:
    check: dict[str, Any] = {
        "timeout": seconds(max(interval_s, 0.5)),
        "interval": seconds(interval_s),
        # Also while the cluster has no traffic (Envoy's default then is one check a minute).
        "no_traffic_interval": seconds(interval_s),
        "unhealthy_threshold": 1,  # one failed check: no more streams to it
        "healthy_threshold": 1,
    }
    if all(r.http_port is not None for r in replicas):
        check["http_health_check"] = {"path": "/readyz"}
    else:
        check["tcp_health_check"] = {}
    return check


def _endpoint(replica: ExtProcReplica, with_http: bool) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": socket(replica.host, replica.grpc_port)}
    if with_http and replica.http_port is not None:
        endpoint["health_check_config"] = {"port_value": replica.http_port}
    return {"endpoint": endpoint}


def _http2_cluster(name: str, endpoints: list[dict[str, Any]], connect_timeout_s: float) -> dict[str, Any]:
    http2 = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    limit = 100_000
    thresholds = {
        k: limit for k in ("max_connections", "max_pending_requests", "max_requests", "max_retries")
    }
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": seconds(connect_timeout_s),
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2},
        "circuit_breakers": {"thresholds": [thresholds]},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }


def replicas_cluster(
    name: str, replicas: tuple[ExtProcReplica, ...], connect_timeout_s: float, health_interval_s: float
) -> dict[str, Any]:
    """The ext_proc cluster over every replica: round robin over the healthy ones."""
    with_http = all(r.http_port is not None for r in replicas)
    cluster = _http2_cluster(name, [_endpoint(r, with_http) for r in replicas], connect_timeout_s)
    cluster["lb_policy"] = "ROUND_ROBIN"
    cluster["health_checks"] = [_health_check(replicas, health_interval_s)]
    cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 0.0}}
    # Between health checks: a replica whose stream could not be opened (connect refused, reset) is
    # ejected at once, for a few seconds (and again, for longer, while it stays down).
    cluster["outlier_detection"] = {
        "consecutive_gateway_failure": 1,
        "enforcing_consecutive_gateway_failure": 100,
        "consecutive_5xx": 2,
        "interval": seconds(health_interval_s),
        "base_ejection_time": "5s",
        "max_ejection_percent": 50,  # never all: health checks decide that
    }
    return cluster


def access_log_clusters(
    replicas: tuple[ExtProcReplica, ...], connect_timeout_s: float
) -> list[dict[str, Any]]:
    """One single-host cluster per replica, for its own access-log stream."""
    return [
        _http2_cluster(f"{ALS_CLUSTER_PREFIX}{i}", [_endpoint(r, False)], connect_timeout_s)
        for i, r in enumerate(replicas)
    ]


def access_log_cluster_names(count: int) -> list[str]:
    return [f"{ALS_CLUSTER_PREFIX}{i}" for i in range(count)]
