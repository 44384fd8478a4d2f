"""Reading apiserver objects (pods, pools), the back-off, the in-cluster settings and the CLI flags."""

from __future__ import annotations

import argparse
import copy
import random
from pathlib import Path
from typing import Any

import pytest

from epp.discovery.backoff import Backoff
from epp.discovery.kube_client import KubeConfigError, in_cluster
from epp.discovery.kube_objects import PoolTarget, collection_path, pod_endpoints, pod_ready, pool_target
from epp.picker_cli import add_picker_arguments, picker_option_values
from tests.fake_apiserver import fixture

TARGET = PoolTarget((("app", "vllm-qwen"),), (8000,))


def pods() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = fixture("pods-list.json")["items"]
    return items


def test_ready_pod_gives_one_endpoint_per_port() -> None:
    ready = pods()[0]
    (endpoint,) = pod_endpoints(ready, TARGET)
    assert (endpoint.name, endpoint.address) == ("vllm-qwen-7d9f8c6b5-a1", "10.244.1.11:8000")
    two = PoolTarget(TARGET.selector, (8000, 8001))
    assert [e.name.rsplit("-", 2)[-2:] for e in pod_endpoints(ready, two)] == [["rank", "0"], ["rank", "1"]]


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["status"]["conditions"][2].update(status="False"),  # Ready=False
        lambda p: p["status"].pop("podIP"),
        lambda p: p["metadata"].update(deletionTimestamp="2026-11-30T10:05:00Z"),
        lambda p: p["status"].update(phase="Succeeded"),
        lambda p: p["metadata"]["labels"].update(app="other"),  # relabelled out of the selector
    ],
)
def test_pods_that_give_no_endpoint(change: Any) -> None:
    pod = copy.deepcopy(pods()[0])
    change(pod)
    assert pod_endpoints(pod, TARGET) == []


def test_pending_pod_is_not_ready() -> None:
    assert not pod_ready(pods()[2])


def test_ipv6_pod_ip_is_bracketed() -> None:
    pod = copy.deepcopy(pods()[0])
    pod["status"]["podIP"] = "fd00::11"
    assert pod_endpoints(pod, TARGET)[0].address == "[fd00::11]:8000"


def test_pool_target_v1_and_v1alpha2_shapes() -> None:
    v1 = fixture("pools-list.json")["items"][0]
    assert pool_target(v1) == TARGET
    assert pool_target({"spec": {"selector": {"app": "vllm-qwen"}, "targetPortNumber": 8000}}) == TARGET
    assert TARGET.label_selector == "app=vllm-qwen"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"selector": {"matchExpressions": [{"key": "app"}]}, "targetPortNumber": 1}, "matchExpressions"),
        ({"selector": {}, "targetPortNumber": 8000}, "selector"),
        ({"selector": {"app": "x"}, "targetPorts": [{"number": 0}]}, "targetPorts"),
        ({"selector": {"app": "x"}}, "targetPorts"),
    ],
)
def test_unusable_pool_specs(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        pool_target({"spec": spec})


def test_collection_paths() -> None:
    assert collection_path("v1", "llm", "pods") == "/api/v1/namespaces/llm/pods"
    assert (
        collection_path("inference.networking.k8s.io/v1", "llm", "inferencepools")
        == "/apis/inference.networking.k8s.io/v1/namespaces/llm/inferencepools"
    )


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(0.1, 2.0, random.Random(3))
    delays = [backoff.next_delay() for _ in range(40)]
    assert all(0.01 <= d <= 2.0 for d in delays)
    assert max(delays[:2]) <= 0.2  # the first retries are quick
    assert max(delays[10:]) > 1.0  # later ones spread up to the cap
    assert len(set(delays)) > 30  # jittered: retrying clients do not move in lockstep
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_in_cluster_reads_the_service_account(tmp_path: Path) -> None:
    for name, text in (("token", "t0k3n\n"), ("ca.crt", "---CA---"), ("namespace", "llm\n")):
        (tmp_path / name).write_text(text)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    connection = in_cluster(env, tmp_path)
    assert connection.base_url == "https://10.96.0.1:443"
    assert connection.token_path == tmp_path / "token"
    assert connection.namespace == "llm"
    assert in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path).base_url == "https://[fd00::1]:443"


def test_in_cluster_refuses_outside_a_cluster(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster({}, tmp_path)
    with pytest.raises(KubeConfigError, match="no service account"):
        in_cluster({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, tmp_path)


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_picker_arguments(p)
    return p.parse_args(list(argv))


def test_discovery_flags() -> None:
    assert picker_option_values(parse())["discovery"] is None
    options = picker_option_values(
        parse("--discovery", "kubernetes", "--kube-api", "http://127.0.0.1:8001", "--pool-name", "p")
    )["discovery"]
    assert (options.mode, options.kube_api, options.pool_name) == ("kubernetes", "http://127.0.0.1:8001", "p")
    options = picker_option_values(
        parse("--discovery", "file:/etc/epp/pods.yaml", "--discovery-interval", "0.5")
    )["discovery"]
    assert (options.mode, options.path, options.poll_interval_s) == ("file", Path("/etc/epp/pods.yaml"), 0.5)


@pytest.mark.parametrize("value", ["k8s", "file:", "consul"])
def test_bad_discovery_flag(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--discovery", value)
    assert "kubernetes` or `file:PATH" in capsys.readouterr().err
