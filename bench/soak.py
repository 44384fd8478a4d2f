"""`python -m bench.soak`: streaming clients plus idle connections against `epp gateway`; resources after.

Simulated pods (`epp sim`) and the gateway run as subprocesses. For `--duration` seconds, `--clients`
streaming chat clients send requests back to back while `--idle` connections are opened to the gateway and
left silent (a slowloris-style crowd). The report: requests done, client errors, and the gateway's RSS and
open files at the start, at the peak and after the run (once the idle connections were closed by the
gateway's idle/header timeouts or by the benchmark), with the change against the start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.compare.frontends import GatewayProcess
from bench.sim.process import SimProcess

MODEL = "sim/tiny"


@dataclass(frozen=True)
class Resources:
    rss_mb: float
    open_files: int


def resources(pid: int) -> Resources:
    """RSS (MiB) and open file descriptors of a Linux process."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return Resources(rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class SoakResult:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    start: Resources | None = None
    peak: Resources | None = None
    after: Resources | None = None
    after_rounds: list[Resources] = field(default_factory=list)  # after each round, when several ran
    cold: Resources | None = None  # before the warm-up round, when there was one


async def _client(base_url: str, until: float, result: SoakResult, n: int) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"client {n}: tell me something long"}],
        "max_tokens": 16,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, trust_env=False) as client:
        while time.monotonic() < until:
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    text = b"".join([chunk async for chunk in r.aiter_bytes()])
                if r.status_code != 200 or b"[DONE]" not in text or b'"error"' in text:
                    result.errors.append(f"HTTP {r.status_code}: {text[:200]!r}")
                else:
                    result.requests += 1
            except httpx.HTTPError as exc:
                result.errors.append(repr(exc))


async def _idle(host: str, port: int, count: int, hold: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (host, port))
            if i % 2:  # half send part of a request's headers and stop
                await loop.sock_sendall(s, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        await hold.wait()
    finally:
        for s in socks:
            s.close()


async def _watch(pid: int, result: SoakResult, stop: asyncio.Event) -> None:
    while not stop.is_set():
        now = resources(pid)
        peak = result.peak
        if peak is None or now.rss_mb > peak.rss_mb or now.open_files > peak.open_files:
            result.peak = Resources(
                max(now.rss_mb, peak.rss_mb if peak else 0),
                max(now.open_files, peak.open_files if peak else 0),
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def soak(
    base_url: str,
    pid: int,
    clients: int,
    idle: int,
    duration_s: float,
    rounds: int = 1,
    warmup_s: float = 0.0,
) -> SoakResult:
    """`rounds` soaks back to back; `after` is the last one's, `after_rounds` each one's. With `warmup_s`, a
    short round of the same shape comes first and `start` is read after it (`cold` before it): the
    allocator's high-water mark for that concurrency is then part of the start, and what the rounds add is
    growth."""
    result = SoakResult()
    if warmup_s > 0:
        result.cold = resources(pid)
        warm = SoakResult()
        await _one_round(base_url, pid, clients, idle, warmup_s, warm)
        result.errors += warm.errors
    result.start = resources(pid)
    for _ in range(rounds):
        await _one_round(base_url, pid, clients, idle, duration_s, result)
        assert result.after is not None
        result.after_rounds.append(result.after)
    return result


async def _one_round(
    base_url: str, pid: int, clients: int, idle: int, duration_s: float, result: SoakResult
) -> None:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    hold, stop = asyncio.Event(), asyncio.Event()
    watcher = asyncio.create_task(_watch(pid, result, stop))
    idlers = asyncio.create_task(_idle(host, int(port), idle, hold))
    until = time.monotonic() + duration_s
    await asyncio.gather(*(_client(base_url, until, result, i) for i in range(clients)))
    hold.set()
    await idlers
    stop.set()
    await watcher
    await asyncio.sleep(6.0)  # past the upstream keep-alive (4 s): pooled pod connections are closed too
    result.after = resources(pid)


def _change(a: float, b: float) -> str:
    return f"{(b - a) / a * 100:+.1f}%" if a else "-"


def format_report(result: SoakResult, args: argparse.Namespace, command: str) -> str:
    start, peak, after = result.start, result.peak, result.after
    assert start is not None and peak is not None and after is not None
    lines = [
        f"Command: `{command}`",
        f"Clients: {args.clients} streaming, {args.idle} idle connections, "
        f"{getattr(args, 'rounds', 1)} round(s) of {args.duration:g} s",
        f"Requests completed: {result.requests}; client errors: {len(result.errors)}",
        "",
        "| gateway | start | peak | after | after vs start |",
        "|---|--:|--:|--:|--:|",
        f"| RSS MiB | {start.rss_mb:.1f} | {peak.rss_mb:.1f} | {after.rss_mb:.1f} | "
        f"{_change(start.rss_mb, after.rss_mb)} |",
        f"| open files | {start.open_files} | {peak.open_files} | {after.open_files} | "
        f"{_change(start.open_files, after.open_files)} |",
    ]
    if result.cold is not None:
        lines += [
            "",
            f"Before the warm-up round: {result.cold.rss_mb:.1f} MiB / {result.cold.open_files} files",
        ]
    if len(result.after_rounds) > 1:
        rounds = ", ".join(f"{r.rss_mb:.1f} MiB / {r.open_files} files" for r in result.after_rounds)
        lines += ["", f"After each round: {rounds}"]
    if result.errors:
        lines += ["", "First errors:", *(f"- {e}" for e in result.errors[:5])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--idle", type=int, default=300)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per round")
    p.add_argument("--rounds", type=int, default=2, help="soaks back to back (a leak grows every round)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of the same load before `start`")
    p.add_argument("--pods", type=int, default=4)
    p.add_argument("--time-scale", type=float, default=20.0, help="simulator speed-up")
    p.add_argument("--gateway-arg", action="append", default=[], help="extra `epp gateway` flag (repeat)")
    args = p.parse_args(argv)
    sim_args = ["--pods", str(args.pods), "--profile", "tiny", "--time-scale", str(args.time_scale)]
    with SimProcess(sim_args) as sim:
        endpoints = ",".join(u.removeprefix("http://") for u in sim.urls)
        gw_args = ["--endpoints", endpoints, "--log-level", "WARNING", *args.gateway_arg]
        with GatewayProcess(gw_args) as gateway:
            assert gateway.proc is not None
            result = asyncio.run(
                soak(
                    gateway.base_url,
                    gateway.proc.pid,
                    args.clients,
                    args.idle,
                    args.duration,
                    args.rounds,
                    args.warmup,
                )
            )
    command = " ".join(["python -m bench.soak", *(sys.argv[1:] if argv is None else argv)])
    print(format_report(result, args, command))
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
