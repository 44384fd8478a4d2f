"""A short soak of `epp gateway` (bench.soak): streaming clients plus idle connections, then resources."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench.compare.frontends import GatewayProcess
from bench.sim.process import SimProcess
from bench.soak import format_report, soak

pytestmark = pytest.mark.slow


def test_streaming_clients_and_idle_connections_leave_no_errors_and_no_open_files() -> None:
    with SimProcess(["--pods", "2", "--profile", "tiny", "--time-scale", "50"]) as sim:
        endpoints = ",".join(u.removeprefix("http://") for u in sim.urls)
        with GatewayProcess(["--endpoints", endpoints, "--log-level", "WARNING"]) as gateway:
            assert gateway.proc is not None
            result = asyncio.run(
                soak(gateway.base_url, gateway.proc.pid, clients=20, idle=40, duration_s=3.0)
            )
            assert gateway.proc.poll() is None  # still serving
    args = argparse.Namespace(clients=20, idle=40, duration=3.0)
    report = format_report(result, args, "test")
    assert result.requests > 20 and not result.errors, report
    assert result.start is not None and result.peak is not None and result.after is not None
    assert result.peak.open_files >= result.start.open_files + 40  # the idle crowd was really connected
    assert result.after.open_files <= result.start.open_files + 5, report  # and is gone again
