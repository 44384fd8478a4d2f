"""Envoy config for the traffic documents (LLMProvider, LLMRoute, DestinationRule, VirtualService).

Where the choice is made: epp's ext_proc, with the same TrafficRouter as `epp gateway` (so header rules and
weights agree across both data planes; the weighted draw uses epp's rng, not Envoy's weighted_clusters). It
answers a request to a route or provider host with header `x-epp-provider: <provider host>` (and
`x-epp-rule`) and clears the route cache; the host's virtual host (below) sends that header's value to
the provider's cluster. A request to any other host keeps the pool path. A client's own epp routing
headers are removed before routing (early_header_mutations), so failing open they choose nothing.

Per provider: cluster `provider_<host>` (LOGICAL_DNS to host:443, or STATIC to a `--resolve` address), TLS
with SNI and certificate verification (the provider's caFile, else the `--upstream-ca-file`, else
certifi's bundle), `outlier_detection` from its DestinationRule, and an *upstream* ext_proc filter: epp
rewrites each attempt for the provider that attempt goes to (path, `:authority`, `model`/`stream`,
`Authorization: Bearer <key>`), so the key travels in the ext_proc answer and never sits in the YAML, and
a retry on the fallback gets the fallback's own model and key. A provider with a VirtualService fallback is
routed to the aggregate cluster `fallback_<host>` = [provider, fallback, ...]: while the provider is ejected
Envoy's aggregate load balancer sends its traffic to the next cluster, and the retry policy
(previous_priorities) retries a request that failed before any response byte once per fallback.

Per rule (epp's LLMRoute extras, epp/envoy_gateway/rules.py): a rule with `timeout` or `retries` gets its
own route per provider backend in its route host's virtual host, matching `x-epp-rule` as well, before
the provider routes: `retries` is its retry policy's `num_retries`, `timeout` its `per_try_timeout` (to the
first response byte of each attempt; Envoy ignores it once the answer started going downstream).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.config.traffic.config import TrafficConfig
from epp.config.traffic.policy import DEFAULT_CLIENT_PORT, UpstreamTLS
from epp.envoy_gateway import replies
from epp.envoy_gateway.rules import RuleSettings, rule_settings
from epp.health.outlier import OutlierSettings
from epp.servers.extproc_messages import (
    FROM_HEADER,
    POOL_HEADER,
    PROVIDER_HEADER,
    RULE_HEADER,
    UPSTREAM_METADATA_KEY,
)
from epp.traffic.resolve import Address

_T = "type.googleapis.com/envoy."
_EXTPROC = "envoy.filters.http.ext_proc"


@dataclass(frozen=True)
class TrafficRenderOptions:
    extproc_cluster: str
    message_timeout: str  # an Envoy duration
    connect_timeout: str
    per_try_idle_timeout: str
    body_limit: int
    resolve: Mapping[Address, Address] = field(default_factory=dict)  # provider host:port -> addr:port
    upstream_ca_file: str | None = None  # for providers without their own caFile (default: certifi's)


def provider_cluster_name(host: str) -> str:
    return f"provider_{host}"


def route_cluster_name(traffic: TrafficConfig, host: str) -> str:
    """The cluster the route for provider `host` uses: its aggregate when it has fallbacks."""
    return f"fallback_{host}" if traffic.fallback_chain(host) else provider_cluster_name(host)


def render_clusters(traffic: TrafficConfig, opts: TrafficRenderOptions) -> list[dict[str, Any]]:
    clusters = [_provider_cluster(traffic, host, opts) for host in sorted(traffic.providers)]
    for host in sorted(traffic.providers):
        chain = traffic.fallback_chain(host)
        if chain:
            clusters.append(_aggregate_cluster(host, chain, opts))
    return clusters


def early_header_mutations() -> list[dict[str, Any]]:
    """The HCM's early header mutation: a client's own epp routing headers are removed before any route is
    chosen or filter runs, so with epp down and the listener failing open they cannot pick a cluster."""
    removed = (PROVIDER_HEADER, RULE_HEADER, POOL_HEADER, UPSTREAM_METADATA_KEY)
    return [
        {
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": _T + "extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                "mutations": [{"remove": name} for name in removed],
            },
        }
    ]


def render_virtual_hosts(
    traffic: TrafficConfig, opts: TrafficRenderOptions, pool_route: dict[str, Any]
) -> list[dict[str, Any]]:
    """One virtual host per route or provider host; each must come before the pool's `*` host.

    A route host's virtual host starts with its rules' own routes (those with `timeout` or `retries`)."""
    provider_routes = [_provider_route(traffic, host, None, opts) for host in sorted(traffic.providers)]
    pool = {
        "name": "inference pool",
        "match": {"prefix": "/", "headers": [{"name": POOL_HEADER, "present_match": True}]},
        "route": pool_route,
        "request_body_buffer_limit": opts.body_limit,
    }
    # Matched before epp answered (ext_proc enabled here); epp's answer re-selects a route above. Reached
    # after epp only when epp failed open: then no provider was chosen.
    undecided = {
        "name": "unrouted",
        "match": {"prefix": "/", "headers": [_exact(":method", "POST")]},
        "direct_response": {
            "status": 503,
            "body": {"inline_string": _json_error("No provider was chosen for this request.")},
        },
        "request_body_buffer_limit": opts.body_limit,
    }
    not_post = {
        "name": "405",
        "match": {"prefix": "/"},
        "direct_response": replies.method_not_allowed(["POST"]),
        "typed_per_filter_config": {
            _EXTPROC: {"@type": _T + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute", "disabled": True}
        },
    }
    routes = [*provider_routes, pool, undecided, not_post]
    hosts = sorted({*traffic.routes, *traffic.providers})
    return [
        {
            "name": f"traffic {h}",
            "domains": [h, f"{h}:*"],
            "routes": [*_rule_routes(traffic, h, opts), *routes],
        }
        for h in hosts
    ]


def _rule_routes(traffic: TrafficConfig, host: str, opts: TrafficRenderOptions) -> list[dict[str, Any]]:
    route = traffic.routes.get(host)
    if route is None:
        return []
    return [_provider_route(traffic, s.provider, s, opts) for s in rule_settings(route)]


def _provider_route(
    traffic: TrafficConfig, host: str, rule: RuleSettings | None, opts: TrafficRenderOptions
) -> dict[str, Any]:
    """The route to provider `host`'s cluster; with `rule`: only that rule's requests, its settings."""
    match = [_exact(PROVIDER_HEADER, host)]
    name = f"provider {host}"
    if rule is not None:
        name += f" rule {rule.label}"
        if rule.rule is None:  # epp removes the header for an unnamed rule
            match.append({"name": RULE_HEADER, "present_match": True, "invert_match": True})
        else:
            match.append(_exact(RULE_HEADER, rule.rule))
    return {
        "name": name,
        "match": {"prefix": "/", "headers": match},
        "route": {
            "cluster": route_cluster_name(traffic, host),
            "timeout": "0s",
            "retry_policy": _retry_policy(len(traffic.fallback_chain(host)), opts, rule),
        },
        "request_body_buffer_limit": opts.body_limit,
    }


def _exact(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "string_match": {"exact": value}}


def _json_error(message: str) -> str:
    error = {"message": message, "type": "service_unavailable", "param": None, "code": "no_provider"}
    return json.dumps({"error": error})


def _retry_policy(
    fallbacks: int, opts: TrafficRenderOptions, rule: RuleSettings | None = None
) -> dict[str, Any]:
    # Only before any response byte (Envoy never retries after headers went downstream). Without a fallback
    # a 5xx is the provider's answer, passed on; a connection that failed is tried once more. A rule's
    # `retries` replaces the count (0: the first attempt's answer or failure is the client's).
    retry_on = ["connect-failure", "refused-stream", "reset"]
    retries = rule.retries if rule is not None and rule.retries is not None else max(fallbacks, 1)
    policy: dict[str, Any] = {"num_retries": retries}
    if rule is not None and rule.timeout_s is not None:
        # Each attempt's deadline to its first response byte ("reset" retries it while retries are left);
        # past it without a retry Envoy answers 504 (flag UT), rendered as JSON by replies.py.
        policy["per_try_timeout"] = _seconds(rule.timeout_s)
    policy["per_try_idle_timeout"] = opts.per_try_idle_timeout
    if fallbacks:
        retry_on = ["5xx", "gateway-error", *retry_on]
        # Each retry goes to the next cluster of the aggregate (its priorities), not the one that failed.
        policy["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": _T + "extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 1,
            },
        }
    policy["retry_on"] = ",".join(retry_on)
    return policy


def _aggregate_cluster(host: str, chain: tuple[str, ...], opts: TrafficRenderOptions) -> dict[str, Any]:
    # Envoy runs the upstream filters of the route's cluster (this one), not of the member cluster the
    # attempt goes to: the member's endpoint metadata names the provider, copied into a header for epp.
    named = {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _T + "extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [
                    {
                        "append": {
                            "header": {
                                "key": UPSTREAM_METADATA_KEY,
                                "value": "%UPSTREAM_METADATA(epp:provider)%",
                            },
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }
                    }
                ]
            },
        },
    }
    return {
        "name": f"fallback_{host}",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [named, _upstream_extproc(FROM_HEADER, opts), _upstream_codec()],
            }
        },
        "connect_timeout": opts.connect_timeout,
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.aggregate",
            "typed_config": {
                "@type": _T + "extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": [provider_cluster_name(h) for h in (host, *chain)],
            },
        },
    }


def _provider_cluster(traffic: TrafficConfig, host: str, opts: TrafficRenderOptions) -> dict[str, Any]:
    policy = traffic.upstream(host, DEFAULT_CLIENT_PORT)
    tls = policy.tls
    port = tls.default_port
    override = opts.resolve.get(Address(host, port))
    address = override or Address(host, port)
    cluster: dict[str, Any] = {
        "name": provider_cluster_name(host),
        # One logical host per provider: the provider is ejected as a whole, whatever its DNS answers.
        "type": "STATIC" if override else "LOGICAL_DNS",
        "connect_timeout": opts.connect_timeout,
        "load_assignment": {
            "cluster_name": provider_cluster_name(host),
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": address.host, "port_value": address.port}
                                }
                            },
                            "metadata": {"filter_metadata": {"epp": {"provider": host}}},
                        }
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [_upstream_extproc(host, opts), _upstream_codec()],
            }
        },
    }
    if not override:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if policy.outlier is not None:
        cluster["outlier_detection"] = outlier_detection(policy.outlier)
        # Istio's minHealthPercent is Envoy's panic threshold: below it, ejections are ignored. Envoy's own
        # default (50%) would route to an ejected single host instead of falling back, so it is always set.
        cluster["common_lb_config"] = {
            "healthy_panic_threshold": {"value": policy.outlier.min_health_percent}
        }
    if tls.enabled:
        cluster["transport_socket"] = _tls_socket(host, tls, opts.upstream_ca_file)
    return cluster


def outlier_detection(s: OutlierSettings) -> dict[str, Any]:
    """Envoy's OutlierDetection for Istio's settings on a one-host provider cluster (istiod's mapping: a
    threshold of 0 disables).

    With minHealthPercent > 0 nothing is enforced (detections are still counted): the ejected host would
    be 0% healthy, below the panic threshold, so Envoy would ignore the ejection on the provider cluster
    itself; but an aggregate cluster picks its member by the members' healthy hosts, not their panic
    state, and would move the traffic to the fallback anyway."""
    enforce = 0 if s.min_health_percent > 0 else 100
    return {
        "consecutive_5xx": s.consecutive_5xx,
        "enforcing_consecutive_5xx": enforce if s.consecutive_5xx else 0,
        "consecutive_gateway_failure": s.consecutive_gateway_errors,
        "enforcing_consecutive_gateway_failure": enforce if s.consecutive_gateway_errors else 0,
        "enforcing_success_rate": 0,
        "interval": _seconds(s.interval_s),
        "base_ejection_time": _seconds(s.base_ejection_time_s),
        "max_ejection_time": _seconds(s.max_ejection_time_s),
        "max_ejection_percent": int(s.max_ejection_percent),
        # A provider is one host: without this, a max below 100% would never let it be ejected (Envoy
        # >= 1.28); epp's own detector grants the first ejection the same way.
        "always_eject_one_host": s.max_ejection_percent > 0,
    }


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _tls_socket(host: str, tls: UpstreamTLS, default_ca: str | None) -> dict[str, Any]:
    context: dict[str, Any] = {"common_tls_context": {}}
    if tls.verify:
        ca = tls.ca_file or default_ca or _certifi_bundle()
        context["common_tls_context"]["validation_context"] = {
            "trusted_ca": {"filename": ca},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}],
        }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.sni or host,
            **context,
        },
    }


def _certifi_bundle() -> str:
    import certifi

    return str(certifi.where())


def _upstream_extproc(host: str, opts: TrafficRenderOptions) -> dict[str, Any]:
    """ext_proc on each attempt to `host`: epp knows which provider from the gRPC metadata."""
    return {
        "name": _EXTPROC,
        "typed_config": {
            "@type": _T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": opts.extproc_cluster},
                "initial_metadata": [{"key": UPSTREAM_METADATA_KEY, "value": host}],
            },
            "failure_mode_allow": False,  # never send a request without its provider's key and model
            "message_timeout": opts.message_timeout,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            # :authority and :path are the provider's.
            "mutation_rules": {"allow_all_routing": True},
        },
    }


def _upstream_codec() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.upstream_codec",
        "typed_config": {"@type": _T + "extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
    }
