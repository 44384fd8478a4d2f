"""Envoy in front of several `epp serve` replicas: the rendered ext_proc cluster, health checks and
per-replica access logs, and a real Envoy with two replicas that share the traffic and fail over when one
is killed.

PICKER_CONFIGS lists the picker set-ups the real-process tests run under (StackOptions fields: e.g.
`config_paths` of a precise-prefix config, to add "two replicas give identical prefix scores").
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.envoy_stack.processes import find_envoy_binary
from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.sim.process import SimProcess
from epp.envoy_gateway.config import EXTPROC_CLUSTER, EnvoyConfigOptions, render_config
from epp.envoy_gateway.replicas import ExtProcReplica, ReplicaError, parse_replica
from tests.test_envoy_support import addresses, chat_body, metric_sum, poll, sim_pods

PICKER_CONFIGS = [pytest.param({"strategy": "PREFIX_CACHE"}, id="prefix-cache")]
TWO = (ExtProcReplica("10.0.1.1", 9002, 9003), ExtProcReplica("10.0.1.2", 9002, 9003))


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def _hosts(cluster: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    found = []
    for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
        address = e["endpoint"]["address"]["socket_address"]
        health = e["endpoint"].get("health_check_config", {}).get("port_value")
        found.append((address["address"], address["port_value"], health))
    return found


@pytest.mark.parametrize(
    ("text", "replica"),
    [
        ("10.0.0.5:9002", ExtProcReplica("10.0.0.5", 9002)),
        ("10.0.0.5:9002/9003", ExtProcReplica("10.0.0.5", 9002, 9003)),
        ("[fd00::5]:9002/9003", ExtProcReplica("fd00::5", 9002, 9003)),
    ],
)
def test_parse_replica(text: str, replica: ExtProcReplica) -> None:
    assert parse_replica(text) == replica
    assert str(replica) == text


@pytest.mark.parametrize("text", ["epp:9002", "10.0.0.5", "10.0.0.5:0", "10.0.0.5:9002/70000", "10.0.0.5:x"])
def test_parse_replica_refuses(text: str) -> None:
    with pytest.raises(ReplicaError, match="--epp"):
        parse_replica(text)


def test_replicas_render_a_balanced_health_checked_cluster_and_one_access_log_each() -> None:
    config = render_config(EnvoyConfigOptions([("10.0.0.1", 8000)], 0, extproc_replicas=TWO))
    clusters = _clusters(config)
    extproc = clusters[EXTPROC_CLUSTER]
    assert _hosts(extproc) == [("10.0.1.1", 9002, 9003), ("10.0.1.2", 9002, 9003)]
    assert extproc["lb_policy"] == "ROUND_ROBIN"
    (check,) = extproc["health_checks"]
    assert check["http_health_check"] == {"path": "/readyz"}
    assert check["no_traffic_interval"] == "1s"
    assert extproc["outlier_detection"]["consecutive_gateway_failure"] == 1
    # Each replica hears every outcome on its own stream (it releases the in-flight counts of its requests).
    logs = _hcm(config)["access_log"]
    names = [
        log["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] for log in logs
    ]
    assert names == ["epp_als_0", "epp_als_1"]
    assert [_hosts(clusters[n]) for n in names] == [[("10.0.1.1", 9002, None)], [("10.0.1.2", 9002, None)]]


def test_replicas_without_http_ports_are_checked_by_tcp_connect() -> None:
    replicas = (ExtProcReplica("10.0.1.1", 9002), ExtProcReplica("10.0.1.2", 9102, 9103))
    config = render_config(EnvoyConfigOptions([("10.0.0.1", 8000)], 0, extproc_replicas=replicas))
    extproc = _clusters(config)[EXTPROC_CLUSTER]
    assert extproc["health_checks"][0]["tcp_health_check"] == {}
    assert [h for _, _, h in _hosts(extproc)] == [None, None]  # a TCP check dials the gRPC port itself


def test_one_extproc_address_renders_as_before() -> None:
    config = render_config(EnvoyConfigOptions([("10.0.0.1", 8000)], 9002))
    extproc = _clusters(config)[EXTPROC_CLUSTER]
    assert "health_checks" not in extproc and not any(n.startswith("epp_als_") for n in _clusters(config))
    (log,) = _hcm(config)["access_log"]
    assert (
        log["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == EXTPROC_CLUSTER
    )


@pytest.mark.slow
def test_config_command_with_replicas_is_valid_for_envoy(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "epp.cli", "envoy", "config", "--endpoints", "10.0.0.1:8000"]
    cmd += ["--epp", "10.0.1.1:9002/9003", "--epp", "10.0.1.2:9002/9003", "--health-check-interval", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert _clusters(yaml.safe_load(result.stdout))[EXTPROC_CLUSTER]["health_checks"][0]["interval"] == "2s"
    path = tmp_path / "envoy.yaml"
    path.write_text(result.stdout)
    check = subprocess.run(
        [find_envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    bad = subprocess.run([*cmd[:-4], "--epp", "epp-0:9002"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--epp 'epp-0:9002'" in bad.stderr


# -- real Envoy, two replicas ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pods() -> Iterator[SimProcess]:
    with sim_pods(2, time_scale=20) as sim:
        yield sim


def _replicas_stack(pods: SimProcess, picker: dict[str, Any]) -> EnvoyStack:
    options = StackOptions(replicas=2, serve_args=("--seed", "1"), health_check_interval_s=0.5, **picker)
    return EnvoyStack(addresses(pods), options)


def _decisions(url: str) -> float:
    return metric_sum(url, "epp_decisions_total")


def _outcomes(url: str) -> float:
    return metric_sum(url, "llm_d_epp_request_duration_seconds_count")


def _settled(url: str, routed: float) -> bool:
    return _outcomes(url) == routed and metric_sum(url, "epp_endpoint_in_flight_requests") == 0


def _send(client: httpx.Client, count: int, tag: str) -> list[int]:
    return [
        client.post("/v1/chat/completions", json=chat_body(f"{tag} {i}")).status_code for i in range(count)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("picker", PICKER_CONFIGS)
def test_two_replicas_share_the_streams_and_release_their_in_flight(
    pods: SimProcess, picker: dict[str, Any]
) -> None:
    with (
        _replicas_stack(pods, picker) as stack,
        httpx.Client(base_url=stack.base_url, trust_env=False, timeout=20) as client,
    ):
        assert len(stack.epp_urls) == 2
        assert _send(client, 20, "spread") == [200] * 20
        decisions = [_decisions(url) for url in stack.epp_urls]
        assert sum(decisions) == 20 and all(d > 0 for d in decisions), decisions
        # Every replica heard the outcome of its own requests from its own access log (duration is recorded
        # from the entry only), and none counts one in flight any more.
        for url, routed in zip(stack.epp_urls, decisions, strict=True):
            poll(partial(_settled, url, routed), f"{url} to hear its {routed} outcomes, none in flight")


@pytest.mark.slow
@pytest.mark.parametrize("picker", PICKER_CONFIGS)
def test_killing_a_replica_fails_over_to_the_other(pods: SimProcess, picker: dict[str, Any]) -> None:
    with (
        _replicas_stack(pods, picker) as stack,
        httpx.Client(base_url=stack.base_url, trust_env=False, timeout=20) as client,
    ):
        assert _send(client, 6, "warm") == [200] * 6
        survivor = stack.epp_urls[0]
        stack.epps[1].kill()
        during = _send(client, 10, "during")  # until Envoy ejects it, a stream may land on the dead one
        assert during.count(200) >= 8, during

        def dead_marked() -> bool:
            text = httpx.get(f"{stack.admin_url}/clusters", timeout=5, trust_env=False).text
            flags = [line for line in text.splitlines() if line.startswith(f"{EXTPROC_CLUSTER}::")]
            return any("health_flags::" in f and "failed" in f for f in flags)

        poll(dead_marked, "Envoy to mark the killed replica unhealthy")
        before = _decisions(survivor)
        assert _send(client, 30, "after") == [200] * 30
        assert _decisions(survivor) - before == 30  # the survivor routed every one
