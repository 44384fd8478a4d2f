"""`epp gateway` as a real process: the ready line, serving through it, SIGTERM, configuration errors."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.test_gateway_support import MODEL, chat
from tests.test_serve_support import start_sim, stop_process

FIXTURES = Path(__file__).parent / "fixtures" / "config"
READY = re.compile(r"^epp gateway listening on http://127\.0\.0\.1:(\d+)\n$")


def run_gateway(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "epp.cli", "gateway", "--port", "0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
async def test_ready_line_serves_and_exits_0_on_sigterm() -> None:
    sim = await start_sim("--pods", "2", "--base-port", "0", "--profile", "tiny", "--time-scale", "20")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "epp.cli",
            "gateway",
            "--endpoints",
            ",".join(sim.addresses),
            "--port",
            "0",
            "--strategy",
            "PREFIX_CACHE",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(30):
                line = (await proc.stdout.readline()).decode()
            match = READY.match(line)
            assert match, line
            base = f"http://127.0.0.1:{match.group(1)}"
            secret = "sk-cli-secret-987654321"
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=10) as client:
                r = await client.post(
                    "/v1/chat/completions",
                    json=chat("hello from the CLI test"),
                    headers={"authorization": f"Bearer {secret}"},
                )
                assert r.status_code == 200, r.text
                assert r.json()["model"] == MODEL
                assert (await client.get("/healthz")).json()["status"] == "ok"
        finally:
            code = await stop_process(proc)
        assert code == 0
        rest = (await proc.stdout.read()).decode()
        assert rest == ""  # exactly one line on stdout
        log = (await proc.stderr.read()).decode()
        assert "gateway.access" in log and "status=200" in log
        assert secret not in log and "Traceback" not in log
    finally:
        await stop_process(sim.proc)


@pytest.mark.slow
def test_config_error_exits_2_naming_file_and_field() -> None:
    result = run_gateway("--config", str(FIXTURES / "bad" / "bad-port.yaml"))
    assert result.returncode == 2
    assert "epp gateway: config error:" in result.stderr
    assert "bad-port.yaml" in result.stderr and "spec.targetPortNumber" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_bad_endpoints_exit_2() -> None:
    result = run_gateway("--endpoints", "127.0.0.1:8000,nonsense")
    assert result.returncode == 2
    assert "--endpoints" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_port_in_use_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "epp.cli", "gateway", "--endpoints", "127.0.0.1:1", "--port", str(port)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "epp gateway:" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
