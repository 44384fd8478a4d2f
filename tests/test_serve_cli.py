"""`epp serve` as a real process: config errors, startup, readiness and a clean shutdown on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.test_serve_support import start_serve, stop_serve

FIXTURES = Path(__file__).parent / "fixtures" / "config"


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "epp.cli", "serve", "--grpc-port", "0", "--http-port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_bad_config_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    result = run_serve("--config", str(FIXTURES / "bad" / "bad-port.yaml"))
    assert result.returncode == 2
    assert "bad-port.yaml" in result.stderr
    assert "document 1" in result.stderr
    assert "spec.targetPortNumber" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_endpoints_exit_2() -> None:
    result = run_serve("--endpoints", "127.0.0.1:8000,nonsense")
    assert result.returncode == 2
    assert "--endpoints" in result.stderr
    assert '"nonsense"' in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_config_error_does_not_echo_values_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\n"
        "metadata:\n  name: pool\n  annotations:\n"
        '    inference.networking.x-k8s.io/routing-strategy: "${EPP_TEST_SECRET}"\n'
        "spec: {targetPortNumber: 8000, selector: {app: vllm}}\n"
    )
    result = run_serve("--config", str(config), env={"EPP_TEST_SECRET": "sk-live-0123456789"})
    assert result.returncode == 2
    assert "pool.yaml" in result.stderr
    assert "routing-strategy" in result.stderr
    assert "sk-live" not in result.stderr


@pytest.mark.slow
async def test_serves_until_sigterm(tmp_path: Path) -> None:
    # An endpoint nobody listens on: epp runs, but is not ready and cannot pick.
    serve = await start_serve("--endpoints", "127.0.0.1:9", "--strategy", "LEAST_REQUEST")
    try:
        async with httpx.AsyncClient(base_url=serve.base_url, trust_env=False) as client:
            assert (await client.get("/healthz")).status_code == 200
            r = await client.get("/readyz")
            assert r.status_code == 503
            assert "reason" in r.json()
            r = await client.post("/pick", json={"model": "m", "prompt": "hi"})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "no_endpoint"
            assert "epp_decisions_total" in (await client.get("/metrics")).text
    finally:
        code = await stop_serve(serve)
    assert code == 0, "".join(serve.log)
    startup = next(line for line in serve.log if "epp serving" in line)
    assert "strategy LEAST_REQUEST" in startup
    assert "1 endpoints" in startup
    assert "Traceback" not in "".join(serve.log)
