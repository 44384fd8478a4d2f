"""The Envoy config rendered for the seed traffic documents, checked as a dict (fast: no Envoy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.config import load_config
from epp.envoy_gateway.config import EnvoyConfigOptions, render_config, render_yaml
from epp.envoy_gateway.traffic import outlier_detection
from epp.health.outlier import OutlierSettings
from epp.traffic.resolve import parse_overrides

SEEDS = Path(__file__).parent / "fixtures" / "seed-configs"
ENV = {"DASHSCOPE_API_KEY": "sk-dash-render-0001", "MOONSHOT_API_KEY": "sk-moon-render-0002"}
LITERAL_KEY = "test-api-key"  # in asm-fallback.yaml
CA = "/etc/test-ca.pem"


def _options(seed: str, **overrides: Any) -> EnvoyConfigOptions:
    config = load_config([SEEDS / seed], ENV)
    assert config.traffic is not None
    fields: dict[str, Any] = {"endpoints": [], "extproc_port": 9002, "traffic": config.traffic}
    return EnvoyConfigOptions(**{**fields, "upstream_ca_file": CA, **overrides})


def _clusters(options: EnvoyConfigOptions) -> dict[str, dict[str, Any]]:
    clusters = render_config(options)["static_resources"]["clusters"]
    return {c["name"]: c for c in clusters}


def _hcm(options: EnvoyConfigOptions) -> dict[str, Any]:
    listener = render_config(options)["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _tls(cluster: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = cluster["transport_socket"]["typed_config"]
    return config


def test_routing_seed_provider_clusters_tls_and_no_outlier() -> None:
    clusters = _clusters(_options("asm-llm-routing.yaml"))
    assert {"provider_dashscope.aliyuncs.com", "provider_api.moonshot.cn"} <= clusters.keys()
    assert not any(name.startswith("fallback_") for name in clusters)  # no VirtualService fallback
    for host in ("dashscope.aliyuncs.com", "api.moonshot.cn"):
        cluster = clusters[f"provider_{host}"]
        assert cluster["type"] == "LOGICAL_DNS"
        [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"] == {"address": host, "port_value": 443}
        assert endpoint["metadata"]["filter_metadata"]["epp"]["provider"] == host
        tls = _tls(cluster)
        assert tls["sni"] == host
        validation = tls["common_tls_context"]["validation_context"]
        assert validation["trusted_ca"] == {"filename": CA}
        assert validation["match_typed_subject_alt_names"] == [
            {"san_type": "DNS", "matcher": {"exact": host}}
        ]
        assert "outlier_detection" not in cluster and "common_lb_config" not in cluster
        filters = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]["http_filters"]
        extproc = filters[0]["typed_config"]
        assert extproc["grpc_service"]["initial_metadata"] == [{"key": "x-epp-upstream", "value": host}]
        assert extproc["failure_mode_allow"] is False
        assert filters[-1]["name"] == "envoy.filters.http.upstream_codec"


def test_resolve_override_is_static_and_keeps_the_host_for_tls() -> None:
    resolve = parse_overrides(["api.moonshot.cn:443=127.0.0.1:8443"])
    cluster = _clusters(_options("asm-llm-routing.yaml", resolve=resolve))["provider_api.moonshot.cn"]
    assert cluster["type"] == "STATIC" and "dns_lookup_family" not in cluster
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8443}
    assert _tls(cluster)["sni"] == "api.moonshot.cn"


def test_fallback_seed_outlier_fields_sni_and_aggregate_order() -> None:
    clusters = _clusters(_options("asm-fallback.yaml"))
    broken = clusters["provider_asm-llm-provider-test.com"]
    assert broken["outlier_detection"] == {
        "consecutive_5xx": 1,
        "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 0,  # Istio's default: off
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
        "interval": "1s",
        "base_ejection_time": "10s",
        "max_ejection_time": "300s",
        "max_ejection_percent": 100,
        "always_eject_one_host": True,
    }
    assert broken["common_lb_config"] == {"healthy_panic_threshold": {"value": 0.0}}
    assert _tls(broken)["sni"] == "asm-llm-provider-test"  # the DestinationRule's sni
    assert "outlier_detection" not in clusters["provider_dashscope.aliyuncs.com"]
    aggregate = clusters["fallback_asm-llm-provider-test.com"]
    assert aggregate["lb_policy"] == "CLUSTER_PROVIDED"
    assert aggregate["cluster_type"]["typed_config"]["clusters"] == [
        "provider_asm-llm-provider-test.com",
        "provider_dashscope.aliyuncs.com",
    ]
    assert "fallback_dashscope.aliyuncs.com" not in clusters


def test_fallback_route_retries_on_the_next_priority() -> None:
    hcm = _hcm(_options("asm-fallback.yaml"))
    hosts = {vh["name"]: vh for vh in hcm["route_config"]["virtual_hosts"]}
    assert list(hosts)[-1] == "pool"  # the traffic hosts come before the pool's `*`
    routes = {r["name"]: r for r in hosts["traffic asm-llm-provider-test.com"]["routes"]}
    route = routes["provider asm-llm-provider-test.com"]["route"]
    assert route["cluster"] == "fallback_asm-llm-provider-test.com"
    policy = route["retry_policy"]
    assert policy["num_retries"] == 1
    assert policy["retry_on"].split(",")[:2] == ["5xx", "gateway-error"]
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    plain = routes["provider dashscope.aliyuncs.com"]["route"]
    assert (
        plain["cluster"] == "provider_dashscope.aliyuncs.com"
        and "retry_priority" not in plain["retry_policy"]
    )


def test_client_routing_headers_are_removed_before_routing() -> None:
    [mutation] = _hcm(_options("asm-fallback.yaml"))["early_header_mutation_extensions"]
    removed = {m["remove"] for m in mutation["typed_config"]["mutations"]}
    assert removed == {"x-epp-provider", "x-epp-rule", "x-epp-pool", "x-epp-upstream"}
    pool_only = EnvoyConfigOptions(endpoints=[("10.0.0.1", 8000)], extproc_port=9002)
    assert "early_header_mutation_extensions" not in _hcm(pool_only)  # no route reads those headers


@pytest.mark.parametrize("seed", ["asm-llm-routing.yaml", "asm-fallback.yaml"])
def test_no_api_key_anywhere_in_the_yaml(seed: str) -> None:
    text = render_yaml(_options(seed))
    for key in (*ENV.values(), LITERAL_KEY):
        assert key not in text
    assert "authorization" not in text.lower()
    yaml.safe_load(text)  # and it is YAML


def test_min_health_percent_disables_enforcement_on_a_one_host_cluster() -> None:
    # Ejected, the only host is 0% healthy: below any minHealthPercent > 0, so the ejection never counts.
    settings = OutlierSettings(consecutive_5xx=3, consecutive_gateway_errors=2, min_health_percent=50.0)
    rendered = outlier_detection(settings)
    assert rendered["enforcing_consecutive_5xx"] == 0
    assert rendered["enforcing_consecutive_gateway_failure"] == 0
    assert rendered["consecutive_5xx"] == 3  # still detected (Envoy's ejections_detected_* stats)
    assert outlier_detection(OutlierSettings(max_ejection_percent=0))["always_eject_one_host"] is False


RULES = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata:
  name: rules
spec:
  host: rules.example
  rules:
  - name: strict
    matches:
    - headers:
        x-tier:
          exact: strict
    timeout: 1500ms
    retries: 0
    backendRefs:
    - providerHost: asm-llm-provider-test.com
  - name: patient
    matches:
    - headers:
        x-tier:
          exact: patient
    retries: 3
    backendRefs:
    - providerHost: asm-llm-provider-test.com
    - providerHost: dashscope.aliyuncs.com
  - matches:
    - headers:
        x-tier:
          exact: first
    retries: 2
    backendRefs:
    - providerHost: dashscope.aliyuncs.com
  - name: plain
    matches:
    - headers:
        x-tier:
          exact: plain
    backendRefs:
    - providerHost: dashscope.aliyuncs.com
  - timeout: 30s
    backendRefs:
    - providerHost: dashscope.aliyuncs.com
"""


def _virtual_hosts(options: EnvoyConfigOptions) -> dict[str, dict[str, Any]]:
    return {vh["name"]: vh for vh in _hcm(options)["route_config"]["virtual_hosts"]}


def _with_rules(tmp_path: Path) -> EnvoyConfigOptions:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    config = load_config([SEEDS / "asm-fallback.yaml", path], ENV)
    assert config.traffic is not None
    return EnvoyConfigOptions(endpoints=[], extproc_port=9002, traffic=config.traffic, upstream_ca_file=CA)


def test_rule_timeout_and_retries_get_their_own_routes(tmp_path: Path) -> None:
    hosts = _virtual_hosts(_with_rules(tmp_path))
    routes = hosts["traffic rules.example"]["routes"]
    names = [r["name"] for r in routes]
    # The rules' routes come first; `plain` sets neither field and keeps the provider's default route.
    # The two unnamed rules cannot be told apart by Envoy (no x-epp-rule): the first one decides.
    assert names[:4] == [
        "provider asm-llm-provider-test.com rule strict",
        "provider asm-llm-provider-test.com rule patient",
        "provider dashscope.aliyuncs.com rule patient",
        "provider dashscope.aliyuncs.com rule (unnamed)",
    ]
    assert names[4:6] == ["provider asm-llm-provider-test.com", "provider dashscope.aliyuncs.com"]
    by_name = {r["name"]: r for r in routes}

    strict = by_name["provider asm-llm-provider-test.com rule strict"]
    assert strict["match"]["headers"] == [
        {"name": "x-epp-provider", "string_match": {"exact": "asm-llm-provider-test.com"}},
        {"name": "x-epp-rule", "string_match": {"exact": "strict"}},
    ]
    assert strict["route"]["cluster"] == "fallback_asm-llm-provider-test.com"
    assert strict["route"]["timeout"] == "0s"  # the whole response is never cut: first byte only
    policy = strict["route"]["retry_policy"]
    assert policy["num_retries"] == 0 and policy["per_try_timeout"] == "1.5s"
    assert policy["retry_on"].split(",")[:2] == ["5xx", "gateway-error"]

    patient = by_name["provider asm-llm-provider-test.com rule patient"]["route"]["retry_policy"]
    assert patient["num_retries"] == 3 and "per_try_timeout" not in patient
    plain_patient = by_name["provider dashscope.aliyuncs.com rule patient"]["route"]
    assert plain_patient["cluster"] == "provider_dashscope.aliyuncs.com"
    assert plain_patient["retry_policy"]["num_retries"] == 3
    assert "retry_priority" not in plain_patient["retry_policy"]  # no fallback: connection failures only

    unnamed = by_name["provider dashscope.aliyuncs.com rule (unnamed)"]
    assert unnamed["match"]["headers"][1] == {
        "name": "x-epp-rule",
        "present_match": True,
        "invert_match": True,
    }
    policy = unnamed["route"]["retry_policy"]
    assert policy["num_retries"] == 2 and "per_try_timeout" not in policy


def test_without_the_fields_the_render_is_unchanged(tmp_path: Path) -> None:
    plain = _virtual_hosts(_options("asm-fallback.yaml"))
    ruled = _virtual_hosts(_with_rules(tmp_path))
    assert list(ruled) == [
        "traffic asm-llm-provider-test.com",
        "traffic dashscope.aliyuncs.com",
        "traffic rules.example",
        "pool",
    ]
    for name, vh in plain.items():
        assert ruled[name] == vh  # the provider hosts have no rule routes
    default_routes = plain["traffic dashscope.aliyuncs.com"]["routes"]
    assert ruled["traffic rules.example"]["routes"][4:] == default_routes
    for route in default_routes:
        assert "per_try_timeout" not in route.get("route", {}).get("retry_policy", {})
    assert _clusters(_with_rules(tmp_path)) == _clusters(_options("asm-fallback.yaml"))
