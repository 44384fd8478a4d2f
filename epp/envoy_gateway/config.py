"""Render the Envoy bootstrap that puts epp's ext_proc picker in front of one pool of vLLM pods.

Every allowed request (epp/routes.py; others get JSON 404/405, vhost.py) passes the ext_proc filter
(request headers and the buffered body go to `epp serve`; nothing of the response does, so streams are not
buffered, and epp ends the ext_proc stream once it routed: a picker restart does not touch routed requests).
epp answers with dynamic metadata `envoy.lb/x-gateway-destination-endpoint` =
`ip:port[,ip:port...]`, which the pool cluster's `override_host` load-balancing policy follows: the first
address serves the request, the others serve retries (connect failures, resets and refused streams before
any response byte), then the fallback policy (least request) does. Envoy's own error replies are rendered
as OpenAI-style JSON errors (replies.py); the client limits come from epp/limits.py.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epp import limits
from epp.cache.types import CACHE_HEADER
from epp.config import load_config, parse_endpoints
from epp.config.traffic.config import TrafficConfig
from epp.envoy_gateway import clusters, replicas, replies, traffic
from epp.envoy_gateway.clusters import seconds, socket
from epp.envoy_gateway.vhost import render_routes
from epp.routes import AllowedRoutes
from epp.servers.extproc_messages import DESTINATION_METADATA_NAMESPACE, SERVED_BY_HEADER
from epp.traffic.resolve import Address

POOL_CLUSTER = "inference_pool"
EXTPROC_CLUSTER = "epp_extproc"
EXTPROC_ERROR_STATUS = replies.EXTPROC_ERROR_STATUS
DEFAULT_MAX_BODY_BYTES = limits.DEFAULT_MAX_BODY_BYTES  # the same limit `epp serve` applies
_GRPC_HEADROOM = 1024 * 1024  # an ext_proc message is the body plus headers and framing
_T = "type.googleapis.com/envoy."


class EnvoyConfigError(ValueError):
    """The options cannot make a valid Envoy config (e.g. an endpoint host that is not an IP address)."""


@dataclass(frozen=True)
class EnvoyConfigOptions:
    """What the rendered Envoy listens on, where epp and the pods are, and how failures are handled."""

    endpoints: list[tuple[str, int]]  # the pool's pods, (IP address, port)
    extproc_port: int
    extproc_host: str = "127.0.0.1"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080  # 0: any free port (read it back from the admin API)
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    fail_open: bool = False  # epp unreachable/failing: True routes by least request, False answers 503
    message_timeout_s: float = 5.0  # longest wait for one ext_proc answer
    num_retries: int = 2
    connect_timeout_s: float = 1.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allowed_routes: AllowedRoutes = field(default_factory=AllowedRoutes)
    max_header_bytes: int = limits.DEFAULT_MAX_HEADER_BYTES  # rendered in KiB, rounded up
    max_headers: int = limits.DEFAULT_MAX_HEADERS
    header_timeout_s: float = limits.DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = limits.DEFAULT_BODY_TIMEOUT_S  # after the headers: request_timeout is the sum
    idle_timeout_s: float = limits.DEFAULT_IDLE_TIMEOUT_S  # a connection with no request open
    # No activity on a stream in either direction for this long ends it (408 before the answer started).
    # None: long enough for every attempt to use its per-try idle timeout (retries need that).
    stream_idle_timeout_s: float | None = None
    extra_retry_on: tuple[str, ...] = field(default_factory=tuple)
    # No byte from the pod for this long (before or during the answer): the attempt fails, and before any
    # byte went to the client Envoy retries on the next fallback. A non-streamed answer comes all at once.
    upstream_idle_timeout_s: float = 300.0
    access_log_flush_s: float = 0.05  # how late epp learns an outcome, at most (entries are batched)
    # LLMProvider/LLMRoute/DestinationRule/VirtualService documents (epp/envoy_gateway/traffic.py).
    traffic: TrafficConfig | None = None
    resolve: dict[Address, Address] = field(default_factory=dict)  # provider host:port -> addr:port
    upstream_ca_file: str | None = None  # CA bundle for providers without their own caFile
    # Several `epp serve` replicas (replicas.py); empty: the one at extproc_host:extproc_port.
    extproc_replicas: tuple[replicas.ExtProcReplica, ...] = ()
    health_check_interval_s: float = 1.0  # the replicas' health checks


@dataclass(frozen=True)
class ResolvedPool:
    endpoints: list[tuple[str, int]]  # (IP, port)
    fail_open: bool
    traffic: TrafficConfig | None = None


def resolve_pool(
    config_paths: Sequence[str], endpoints: str | None, strategy: str | None, fail_open: bool | None
) -> ResolvedPool:
    """The pool's pods (the configs' StaticEndpoints, then `endpoints`) and its failure mode (`fail_open`
    None: the pool's extensionRef.failureMode, GIE's default FailClose).

    Raises ConfigError for a bad config, EnvoyConfigError for an endpoint Envoy cannot use."""
    config = load_config([Path(p) for p in config_paths], dict(os.environ), strategy=strategy)
    found = list(config.static_endpoints)
    if endpoints:
        found += parse_endpoints(endpoints)
    if fail_open is None:
        ref = config.pool.spec.extension_ref if config.pool is not None else None
        fail_open = ref is not None and ref.failure_mode == "FailOpen"
    return ResolvedPool([split_endpoint(e.address) for e in found], fail_open, config.traffic)


def split_endpoint(address: str) -> tuple[str, int]:
    """`ip:port` or `[v6]:port` -> (ip, port); EnvoyConfigError for a hostname (override_host matches IPs)."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise EnvoyConfigError(
            f"endpoint {address!r}: Envoy needs an IP address and a port (override_host matches ip:port)"
        ) from None
    if not sep or not 0 < port < 65536:
        raise EnvoyConfigError(f"endpoint {address!r}: port must be 1..65535")
    return host, port


def stream_idle_timeout(options: EnvoyConfigOptions) -> float:
    """The rendered stream_idle_timeout: the option, else every attempt's idle timeout plus 10 s."""
    if options.stream_idle_timeout_s is not None:
        return options.stream_idle_timeout_s
    return options.upstream_idle_timeout_s * (options.num_retries + 1) + 10.0


def _check(options: EnvoyConfigOptions) -> None:
    if not options.endpoints and options.traffic is None:
        raise EnvoyConfigError("the pool has no endpoints (give --endpoints or a StaticEndpoints document)")
    if not 0 < options.max_body_bytes < 2**32 - _GRPC_HEADROOM:
        raise EnvoyConfigError(f"max body bytes must be 1..4 GiB, got {options.max_body_bytes}")
    if not 1024 <= options.max_header_bytes <= 8192 * 1024:  # Envoy's max_request_headers_kb: 1..8192
        raise EnvoyConfigError(f"max header bytes must be 1 KiB..8 MiB, got {options.max_header_bytes}")
    if options.max_headers < 1:
        raise EnvoyConfigError(f"max headers must be >= 1, got {options.max_headers}")
    timeouts = {
        "header timeout": options.header_timeout_s,
        "body timeout": options.body_timeout_s,
        "idle timeout": options.idle_timeout_s,
        "stream idle timeout": stream_idle_timeout(options),
    }
    for name, value in timeouts.items():
        if value <= 0:  # Envoy reads 0 as "no timeout": a slow client could hold a stream forever
            raise EnvoyConfigError(f"{name} must be > 0 s, got {value:g}")


def _extproc_filter(options: EnvoyConfigOptions) -> dict[str, Any]:
    grpc_service: dict[str, Any] = {
        "envoy_grpc": {
            "cluster_name": EXTPROC_CLUSTER,
            # A rewritten body comes back whole in one message (gRPC's default cap is 4 MiB).
            "max_receive_message_length": options.max_body_bytes + _GRPC_HEADROOM,
        }
    }
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": grpc_service,
            "failure_mode_allow": options.fail_open,
            "status_on_error": {"code": EXTPROC_ERROR_STATUS},
            "message_timeout": seconds(options.message_timeout_s),
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                # Nothing of the response reaches epp over ext_proc (two messages per request, SSE not
                # buffered). epp closes the stream once it answered the routing message, so Envoy carries
                # on without ext_proc and a dying epp cannot fail the request; the in-flight release and
                # the outcome come from the access log (_access_log), batched.
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            # The response cache (epp/servers/extproc_cache.py) asks for a selected request's response.
            "allow_mode_override": True,
            # Envoy drops dynamic metadata from ext_proc outside these namespaces.
            "metadata_options": {"receiving_namespaces": {"untyped": [DESTINATION_METADATA_NAMESPACE]}},
        },
    }


def _access_logs(options: EnvoyConfigOptions) -> list[dict[str, Any]]:
    """One access log per epp replica: each must hear the outcome of the requests it routed."""
    if not options.extproc_replicas:
        return [_access_log(options, EXTPROC_CLUSTER)]
    names = replicas.access_log_cluster_names(len(options.extproc_replicas))
    return [_access_log(options, name) for name in names]


def _access_log(options: EnvoyConfigOptions, cluster: str) -> dict[str, Any]:
    """Every request's outcome (status, the pod that served) streamed to epp's AccessLogService, on the
    ext_proc port, many entries to a message: outlier detection and the prefix index learn from it."""
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": _T + "extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": "epp",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "buffer_flush_interval": seconds(options.access_log_flush_s),
            },
        },
    }


def _retry_policy(options: EnvoyConfigOptions) -> dict[str, Any]:
    # Only failures before any response byte: Envoy never retries once response headers went downstream.
    # "5xx" also covers a pod that stays silent past the per-try idle timeout.
    retry_on = ["5xx", "connect-failure", "refused-stream", "reset", *options.extra_retry_on]
    return {
        "retry_on": ",".join(retry_on),
        "num_retries": options.num_retries,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _T + "extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "per_try_idle_timeout": seconds(options.upstream_idle_timeout_s),
    }


def _listener(options: EnvoyConfigOptions) -> dict[str, Any]:
    route = {
        "cluster": POOL_CLUSTER,
        "timeout": "0s",  # generations can run for minutes; the stream idle timeout still applies
        "retry_policy": _retry_policy(options),
    }
    # The pod that answered, as epp's own gateway says it (a fallback shows here).
    served_by = {
        "header": {"key": SERVED_BY_HEADER, "value": "%UPSTREAM_REMOTE_ADDRESS%"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }
    routes = render_routes(options.allowed_routes, route, options.max_body_bytes, served_by)
    hcm = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "epp_gateway",
        "codec_type": "AUTO",
        # Slow or oversized clients (limits.py): headers within header_timeout, the whole request within
        # header + body timeout, at most max_header_bytes / max_headers of headers.
        "max_request_headers_kb": -(-options.max_header_bytes // 1024),
        "request_headers_timeout": seconds(options.header_timeout_s),
        "request_timeout": seconds(options.header_timeout_s + options.body_timeout_s),
        "stream_idle_timeout": seconds(stream_idle_timeout(options)),
        "common_http_protocol_options": {
            "idle_timeout": seconds(options.idle_timeout_s),
            "max_headers_count": options.max_headers,
        },
        "route_config": {
            "name": "inference",
            # The response cache's status, which ext_proc sets as a request header (absent: not added).
            "response_headers_to_add": [
                {
                    "header": {"key": CACHE_HEADER, "value": f"%REQ({CACHE_HEADER})%"},
                    "keep_empty_value": False,
                }
            ],
            "virtual_hosts": [
                *_traffic_hosts(options, route),
                {"name": "pool", "domains": ["*"], "routes": routes},
            ],
        },
        "http_filters": [
            _extproc_filter(options),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
            },
        ],
        "local_reply_config": replies.local_reply_config(options.max_body_bytes),
        "access_log": _access_logs(options),
    }
    if options.traffic is not None:
        hcm["early_header_mutation_extensions"] = traffic.early_header_mutations()
    return {
        "name": "epp_listener",
        "address": socket(options.listen_host, options.listen_port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _traffic_options(options: EnvoyConfigOptions) -> traffic.TrafficRenderOptions:
    return traffic.TrafficRenderOptions(
        extproc_cluster=EXTPROC_CLUSTER,
        message_timeout=seconds(options.message_timeout_s),
        connect_timeout=seconds(options.connect_timeout_s),
        per_try_idle_timeout=seconds(options.upstream_idle_timeout_s),
        body_limit=options.max_body_bytes,
        resolve=options.resolve,
        upstream_ca_file=options.upstream_ca_file,
    )


def _traffic_hosts(options: EnvoyConfigOptions, pool_route: dict[str, Any]) -> list[dict[str, Any]]:
    if options.traffic is None:
        return []
    return traffic.render_virtual_hosts(options.traffic, _traffic_options(options), pool_route)


def render_config(options: EnvoyConfigOptions) -> dict[str, Any]:
    """The Envoy bootstrap (v3) as a dict, ready for YAML or JSON."""
    _check(options)
    return {
        "admin": {"address": socket(options.admin_host, options.admin_port)},
        "static_resources": {
            "listeners": [_listener(options)],
            "clusters": [
                clusters.pool_cluster(POOL_CLUSTER, options.endpoints, options.connect_timeout_s),
                *_extproc_clusters(options),
                *(
                    traffic.render_clusters(options.traffic, _traffic_options(options))
                    if options.traffic
                    else []
                ),
            ],
        },
    }


def _extproc_clusters(options: EnvoyConfigOptions) -> list[dict[str, Any]]:
    timeout = options.connect_timeout_s
    if not options.extproc_replicas:
        return [
            clusters.extproc_cluster(EXTPROC_CLUSTER, (options.extproc_host, options.extproc_port), timeout)
        ]
    found = options.extproc_replicas
    return [
        replicas.replicas_cluster(EXTPROC_CLUSTER, found, timeout, options.health_check_interval_s),
        *replicas.access_log_clusters(found, timeout),
    ]


def render_yaml(options: EnvoyConfigOptions) -> str:
    return yaml.safe_dump(render_config(options), sort_keys=False, default_flow_style=False)
