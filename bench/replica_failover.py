"""What losing a picker replica costs: `python -m bench.replica_failover [--trials 3]`.

- envoy: Envoy over two `epp serve` replicas (EnvoyStack, replicas=2) in front of two simulated pods;
  `--clients` closed-loop clients send chat requests, one replica is SIGKILLed after `--before` seconds;
  prints the requests before and after the kill and the failed ones (seconds after the kill, status).
- gateway: `epp gateway --workers 2`; the time to the ready line, from SIGKILL of worker 0 to its restarted
  ready line, and from SIGTERM to exit.

docs/replicas.md ("Measured") has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.sim.process import SimProcess

_WORKER_READY = re.compile(r"worker 0 pid (\d+) ready")


def _chat(text: str) -> dict[str, object]:
    return {"model": "sim/tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 5}


async def _client(url: str, stop: asyncio.Event, results: list[tuple[float, int]]) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=20) as client:
        i = 0
        while not stop.is_set():
            i += 1
            r = await client.post("/v1/chat/completions", json=_chat(f"request {i} {time.monotonic()}"))
            results.append((time.monotonic(), r.status_code))


async def _kill_under_load(stack: EnvoyStack, clients: int, before_s: float, after_s: float) -> str:
    stop = asyncio.Event()
    results: list[tuple[float, int]] = []
    tasks = [asyncio.create_task(_client(stack.base_url, stop, results)) for _ in range(clients)]
    await asyncio.sleep(before_s)
    killed_at = time.monotonic()
    stack.epps[1].kill()
    await asyncio.sleep(after_s)
    stop.set()
    await asyncio.gather(*tasks)
    early = [s for t, s in results if t < killed_at]
    late = [(t - killed_at, s) for t, s in results if t >= killed_at]
    failed = [(round(t, 3), s) for t, s in late if s != 200]
    return (
        f"before the kill: {len(early)} requests, {sum(s != 200 for s in early)} failed; "
        f"after: {len(late)} requests, {len(failed)} failed {failed}"
    )


def envoy_failover(trials: int, clients: int, before_s: float, after_s: float) -> None:
    with SimProcess(["--pods", "2", "--profile", "tiny", "--time-scale", "20", "--base-port", "0"]) as sim:
        pods = [u.removeprefix("http://") for u in sim.urls]
        for _ in range(trials):
            options = StackOptions(replicas=2, strategy="PREFIX_CACHE")
            with EnvoyStack(pods, options) as stack:
                print("envoy:", asyncio.run(_kill_under_load(stack, clients, before_s, after_s)), flush=True)


def _wait_ready_lines(lines: list[str], count: int, timeout_s: float = 60.0) -> None:
    """Until `count` worker ready lines were logged (another thread appends to `lines`)."""
    deadline = time.monotonic() + timeout_s
    while sum(1 for line in list(lines) if " ready" in line) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} worker ready lines in {timeout_s:g}s")
        time.sleep(0.005)


def _gateway_trial(pods: str) -> str:
    started = time.monotonic()
    cmd = [sys.executable, "-m", "epp.cli", "gateway", "--endpoints", pods, "--port", "0"]
    cmd += ["--workers", "2", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdout.readline()
        ready_s = time.monotonic() - started
        lines: list[str] = []
        threading.Thread(target=lines.extend, args=(proc.stderr,), daemon=True).start()
        _wait_ready_lines(lines, 2)
        found = _WORKER_READY.search("".join(lines))
        assert found is not None
        killed = time.monotonic()
        os.kill(int(found.group(1)), signal.SIGKILL)
        _wait_ready_lines(lines, 3)
        restart_s = time.monotonic() - killed
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return (
        f"ready line {ready_s:.2f}s, worker restart {restart_s:.2f}s, "
        f"SIGTERM to exit {time.monotonic() - stopping:.2f}s, exit code {code}"
    )


def gateway_restart(trials: int) -> None:
    with SimProcess(["--pods", "2", "--profile", "tiny", "--base-port", "0"]) as sim:
        pods = ",".join(u.removeprefix("http://") for u in sim.urls)
        for _ in range(trials):
            print("gateway:", _gateway_trial(pods), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replica_failover", description=__doc__)
    parser.add_argument("what", nargs="?", choices=("envoy", "gateway", "both"), default="both")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--before", type=float, default=2.0, help="seconds of load before the kill")
    parser.add_argument("--after", type=float, default=3.0, help="seconds of load after the kill")
    args = parser.parse_args(argv)
    if args.what in ("envoy", "both"):
        envoy_failover(args.trials, args.clients, args.before, args.after)
    if args.what in ("gateway", "both"):
        gateway_restart(args.trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
