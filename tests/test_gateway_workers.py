"""`epp gateway --workers N` as real processes: both workers serve the shared port, a killed worker is
restarted, SIGTERM drains and stops every worker, a worker failing at start-up stops the group.

PICKER_ARGS lists the picker configurations these run under (extend it, e.g. with a precise-prefix config).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.test_gateway_support import completion, metric_value
from tests.test_serve_support import SimFleetProcess, start_sim, stop_process

FIXTURES = Path(__file__).parent / "fixtures" / "config"
READY = re.compile(r"^epp gateway listening on (http://127\.0\.0\.1:\d+)\n$")
WORKER_READY = re.compile(r"worker (\d+) pid (\d+) ready: metrics (http://\S+)")
PICKER_ARGS = [pytest.param(("--strategy", "PREFIX_CACHE"), id="prefix-cache")]


@dataclass
class Workers:
    proc: asyncio.subprocess.Process
    base_url: str
    log: list[str]
    drain: asyncio.Task[None]
    ready: dict[int, tuple[int, str]] = field(default_factory=dict)  # index -> (pid, metrics URL)

    def text(self) -> str:
        return "".join(self.log)

    def ready_lines(self) -> list[tuple[int, int, str]]:
        return [(int(m[1]), int(m[2]), m[3]) for m in WORKER_READY.finditer(self.text())]


async def _until(probe: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `probe` (log lines arrive from another task, so there is no event to wait on)."""
    try:
        async with asyncio.timeout(timeout_s):
            while not probe():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _collect(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode())


@contextlib.asynccontextmanager
async def gateway_workers(sim: SimFleetProcess, *args: str, workers: int = 2) -> AsyncIterator[Workers]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epp.cli",
        "gateway",
        "--endpoints",
        ",".join(sim.addresses),
        "--port",
        "0",
        "--workers",
        str(workers),
        "--worker-metrics-port",
        "0",
        "--scrape-interval",
        "0.05",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    log: list[str] = []
    drain = asyncio.create_task(_collect(proc.stderr, log))
    try:
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        match = READY.match(line)
        assert match, f"{line!r}\n{''.join(log)}"
        found = Workers(proc, match.group(1), log, drain)
        await _until(lambda: len(found.ready_lines()) >= workers, "worker ready lines")
        found.ready = {i: (pid, url) for i, pid, url in found.ready_lines()}
        yield found
    finally:
        await stop_process(proc, grace_s=30)
        await drain


async def _fresh_connection_requests(base_url: str, count: int) -> list[int]:
    """`count` requests, each on its own connection (SO_REUSEPORT spreads connections, not requests)."""
    statuses = []
    for i in range(count):
        async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=20) as client:
            r = await client.post("/v1/completions", json=completion(f"worker test {i}", max_tokens=2))
            statuses.append(r.status_code)
    return statuses


def _served(metrics_url: str) -> float:
    text = httpx.get(f"{metrics_url}/metrics", timeout=5, trust_env=False).text
    return metric_value(text, "epp_gateway_requests_total", status="200")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is itself gone) counts as gone.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


@pytest.fixture
async def sim() -> AsyncIterator[SimFleetProcess]:
    fleet = await start_sim("--pods", "2", "--base-port", "0", "--profile", "tiny", "--time-scale", "20")
    try:
        yield fleet
    finally:
        await stop_process(fleet.proc)


@pytest.mark.slow
@pytest.mark.parametrize("picker_args", PICKER_ARGS)
async def test_two_workers_share_the_port_and_both_serve(
    sim: SimFleetProcess, picker_args: tuple[str, ...]
) -> None:
    async with gateway_workers(sim, *picker_args) as gw:
        pids = {pid for pid, _ in gw.ready.values()}
        assert len(pids) == 2 and gw.proc.pid not in pids
        statuses = await _fresh_connection_requests(gw.base_url, 40)
        assert statuses == [200] * 40
        served = [_served(url) for _, url in gw.ready.values()]
        assert sum(served) == 40
        assert all(n > 0 for n in served), served  # the kernel gave each worker connections
        # A metrics port answers its own worker's paths only.
        _, url = gw.ready[0]
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=5) as own:
            r = await own.post("/v1/completions", json=completion("x"))
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert (await own.get("/healthz")).json()["status"] == "ok"
    assert gw.proc.returncode == 0, gw.text()
    assert not any(_alive(pid) for pid in pids)
    assert "Traceback" not in gw.text()
    assert gw.proc.stdout is not None and await gw.proc.stdout.read() == b""  # the ready line only


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_sigterm_stops_all(sim: SimFleetProcess) -> None:
    async with gateway_workers(sim) as gw:
        dead_pid, _ = gw.ready[0]
        survivor_pid, _ = gw.ready[1]
        os.kill(dead_pid, signal.SIGKILL)
        await _until(lambda: f"worker 0 (pid {dead_pid}) exited (code -9); restarting" in gw.text(), "exit")
        await _until(lambda: len(gw.ready_lines()) == 3, "the restarted worker's ready line")
        index, new_pid, new_url = gw.ready_lines()[-1]
        assert index == 0 and new_pid not in (dead_pid, survivor_pid)
        assert await _fresh_connection_requests(gw.base_url, 30) == [200] * 30
        assert _served(new_url) > 0  # the new worker took its share of the port
        gw.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await gw.proc.wait()
    assert gw.proc.returncode == 0, gw.text()
    assert "SIGTERM: stopping 2 worker(s)" in gw.text()
    assert not _alive(new_pid) and not _alive(survivor_pid)


@pytest.mark.slow
async def test_sigterm_lets_an_in_flight_request_finish() -> None:
    slow = await start_sim("--pods", "1", "--base-port", "0", "--profile", "tiny", "--time-scale", "0.05")
    try:
        async with gateway_workers(slow, "--drain-timeout", "30") as gw:
            async with httpx.AsyncClient(base_url=gw.base_url, trust_env=False, timeout=60) as client:
                body = completion("drain me", max_tokens=40, stream=True, ignore_eos=True)
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    chunks = r.aiter_text()
                    first = await anext(chunks)
                    gw.proc.send_signal(signal.SIGTERM)
                    rest = "".join([c async for c in chunks])
            assert "[DONE]" in first + rest  # the stream completed, not cut
            async with asyncio.timeout(30):
                await gw.proc.wait()
        assert gw.proc.returncode == 0, gw.text()
    finally:
        await stop_process(slow.proc)


@pytest.mark.slow
async def test_a_worker_failing_at_start_up_stops_the_group(sim: SimFleetProcess) -> None:
    with socket.socket() as busy:  # worker 0's metrics port is taken: it cannot start
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "epp.cli", "gateway", "--endpoints", ",".join(sim.addresses)]
        cmd += ["--port", "0", "--workers", "2", "--worker-metrics-port", str(taken)]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 1, text
    assert out == b""  # never announced
    assert "worker 0 (pid" in text and "exited during start-up (code 1)" in text
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    assert pids and not any(_alive(pid) for pid in pids)


BAD_PLUGIN = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
metadata: {name: p}
plugins: [{type: least-request-scorer, parameters: {replicas: 0}}, {type: max-score-picker}]
schedulingProfiles: [{name: d, plugins: [{pluginRef: least-request-scorer}, {pluginRef: max-score-picker}]}]
"""


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["file", "plugin"])
def test_config_error_with_workers_is_reported_once(tmp_path: Path, bad: str) -> None:
    import subprocess

    if bad == "file":
        path, reason = FIXTURES / "bad" / "bad-port.yaml", "bad-port.yaml"
    else:  # found when the scheduler is built: checked before forking too
        path, reason = tmp_path / "picker.yaml", "parameter 'replicas'"
        path.write_text(BAD_PLUGIN)
    cmd = [sys.executable, "-m", "epp.cli", "gateway", "--port", "0", "--workers", "3"]
    cmd += ["--endpoints", "127.0.0.1:1", "--config", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("epp gateway: config error:") == 1
    assert reason in result.stderr and "epp gateway: worker" not in result.stderr
    assert "Traceback" not in result.stderr
