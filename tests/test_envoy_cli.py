"""`epp envoy config` and `epp envoy up`, and the rendered Envoy config itself."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.envoy_stack.processes import find_envoy_binary
from epp.envoy_gateway.config import EnvoyConfigError, EnvoyConfigOptions, render_config, split_endpoint
from tests.test_envoy_support import addresses, chat_body, poll, sim_pods

EPP = [sys.executable, "-m", "epp.cli"]


def run_epp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EPP, *args], capture_output=True, text=True, timeout=60)


def extproc_filter(config: dict[str, Any]) -> dict[str, Any]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    first: dict[str, Any] = hcm["http_filters"][0]
    assert first["name"] == "envoy.filters.http.ext_proc"
    return dict(first["typed_config"])


def test_split_endpoint_accepts_ips_only() -> None:
    assert split_endpoint("10.0.0.5:8080") == ("10.0.0.5", 8080)
    assert split_endpoint("[::1]:8000") == ("::1", 8000)
    for bad in ("localhost:8000", "10.0.0.5", "10.0.0.5:0", "10.0.0.5:http"):
        with pytest.raises(EnvoyConfigError):
            split_endpoint(bad)


def test_rendered_config_routes_through_extproc_with_override_host() -> None:
    config = render_config(EnvoyConfigOptions(endpoints=[("10.0.0.1", 8000)], extproc_port=9002))
    ext = extproc_filter(config)
    assert ext["failure_mode_allow"] is False
    assert ext["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert ext["processing_mode"]["response_body_mode"] == "NONE"  # streams pass unbuffered
    assert ext["metadata_options"]["receiving_namespaces"]["untyped"] == ["envoy.lb"]
    pool = config["static_resources"]["clusters"][0]
    policy = pool["load_balancing_policy"]["policies"][0]["typed_extension_config"]
    assert policy["name"] == "envoy.load_balancing_policies.override_host"
    source = policy["typed_config"]["override_host_sources"][0]["metadata"]
    assert source == {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}
    open_config = render_config(
        EnvoyConfigOptions(endpoints=[("10.0.0.1", 8000)], extproc_port=9002, fail_open=True)
    )
    assert extproc_filter(open_config)["failure_mode_allow"] is True
    with pytest.raises(EnvoyConfigError, match="no endpoints"):
        render_config(EnvoyConfigOptions(endpoints=[], extproc_port=9002))


def test_envoy_is_1_40() -> None:
    out = subprocess.run([find_envoy_binary(), "--version"], capture_output=True, text=True, timeout=30)
    assert "/1.40." in out.stdout


@pytest.mark.slow
def test_config_command_output_is_valid_for_envoy(tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1\nkind: InferencePool\nmetadata: {name: p}\n"
        "spec:\n  selector: {matchLabels: {app: vllm}}\n  targetPorts: [{number: 8000}]\n"
        "  endpointPickerRef: {name: epp, port: {number: 9002}, failureMode: FailOpen}\n"
    )
    result = run_epp("envoy", "config", "--endpoints", "10.0.0.1:8000,10.0.0.2:8000", "--config", str(pool))
    assert result.returncode == 0, result.stderr
    assert (
        extproc_filter(yaml.safe_load(result.stdout))["failure_mode_allow"] is True
    )  # the pool's failureMode
    path = tmp_path / "envoy.yaml"
    path.write_text(result.stdout)
    check = subprocess.run(
        [find_envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    closed = run_epp(
        "envoy", "config", "--endpoints", "10.0.0.1:8000", "--config", str(pool), "--fail-closed"
    )
    assert extproc_filter(yaml.safe_load(closed.stdout))["failure_mode_allow"] is False


def test_deploy_example_is_what_the_config_command_renders() -> None:
    example = Path(__file__).parent.parent / "deploy" / "envoy" / "envoy.yaml"
    endpoints = "10.0.0.11:8000,10.0.0.12:8000,10.0.0.13:8000"
    result = run_epp("envoy", "config", "--endpoints", endpoints, "--grpc-port", "9002", "--port", "8080")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(example.read_text()) == yaml.safe_load(result.stdout)
    rendered = run_epp("envoy", "render", "--endpoints", endpoints, "--grpc-port", "9002", "--port", "8080")
    assert rendered.returncode == 0 and rendered.stdout == result.stdout  # `render`: the name for it


def test_config_command_refuses_hostnames() -> None:
    result = run_epp("envoy", "config", "--endpoints", "pod-a.local:8000")
    assert result.returncode == 2
    assert "IP address" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_up_serves_then_stops_cleanly_on_sigterm() -> None:
    with sim_pods(1, time_scale=20) as sim:
        proc = subprocess.Popen(
            [*EPP, "envoy", "up", "--endpoints", ",".join(addresses(sim)), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("epp envoy listening on http://127.0.0.1:"), line
            base_url = line.rsplit(" ", 1)[1]
            response = httpx.post(f"{base_url}/v1/chat/completions", json=chat_body("hi"), timeout=30)
            assert response.status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with pytest.raises(httpx.TransportError):  # Envoy is gone with it
            httpx.get(f"{base_url}/v1/models", timeout=5)


@pytest.mark.slow
def test_killed_up_leaves_no_orphans() -> None:
    with sim_pods(1, time_scale=20) as sim:
        proc = subprocess.Popen(
            [*EPP, "envoy", "up", "--endpoints", ",".join(addresses(sim)), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip().rsplit(" ", 1)[1]
        assert httpx.get(f"{base_url}/v1/models", timeout=10).status_code == 200
        proc.kill()  # no chance to clean up: its children must still go
        proc.wait()

        def envoy_gone() -> bool:
            try:
                httpx.get(f"{base_url}/v1/models", timeout=2)
            except httpx.TransportError:
                return True
            return False

        poll(envoy_gone, "Envoy to exit after its parent was killed")


def test_up_reports_a_config_error() -> None:
    result = run_epp("envoy", "up", "--endpoints", "not-an-endpoint", "--port", "0")
    assert result.returncode == 2
    assert "config error" in result.stderr
