"""What epp's /metrics polling costs a pod: the pod process's CPU % of one core at idle, per scrape setting.

`python -m bench.scrape_cost` starts one simulator pod (or, with `--vllm-url URL --vllm-pid PID`, uses a
running vLLM API server), then for each setting runs 0, 1 and 2 `epp gateway` replicas against it and reads
the pod process's user+system CPU time from /proc/PID/stat over a window. Each (setting, replicas) cell is
measured `--runs` times; the report gives the median, the min-max range and the cost per replica over the
pod alone. The pod serves no requests: this is the price of being watched, which a pod pays all day.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.compare.frontends import GatewayProcess
from bench.overhead.cpu import read_stat
from bench.sim.process import SimProcess

# The settings compared by default: before adaptive scraping (every pod every 50 ms) and today's defaults.
DEFAULT_SETTINGS = (
    "old=--scrape-interval 0.05 --scrape-idle-interval 0.05",
    "new=",
)


@dataclass(frozen=True)
class Cell:
    setting: str
    replicas: int
    cpu_pct: list[float]  # one per run, % of one core

    @property
    def median(self) -> float:
        return statistics.median(self.cpu_pct)


def parse_setting(text: str) -> tuple[str, list[str]]:
    """`name=flags...` -> (name, flags); the flags are passed to every `epp gateway` replica."""
    name, sep, flags = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"setting {text!r}: expected NAME=FLAGS (FLAGS may be empty)")
    return name, flags.split()


def cpu_seconds(pid: int) -> float:
    stat = read_stat(pid)
    if stat is None:
        raise RuntimeError(f"pod process {pid} is gone")
    return stat.cpu_s


def measure(pid: int, window_s: float) -> float:
    """The process's CPU use over `window_s`, in % of one core."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    after, t1 = cpu_seconds(pid), time.monotonic()
    return 100.0 * (after - before) / (t1 - t0)


@contextlib.contextmanager
def replicas(n: int, endpoint: str, flags: Sequence[str]) -> Iterator[None]:
    """`n` epp gateways scraping `endpoint` (host:port) with `flags`, for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for _ in range(n):
            args = ["--endpoints", endpoint, "--log-level", "WARNING", *flags]
            stack.enter_context(GatewayProcess(args))
        yield


def run(
    pid: int,
    endpoint: str,
    settings: Sequence[tuple[str, list[str]]],
    counts: Sequence[int],
    runs: int,
    window_s: float,
    warmup_s: float,
) -> list[Cell]:
    """Every (setting, replica count) `runs` times, interleaved so that drift in the machine's load spreads
    over all cells; 0 replicas (the pod alone) is measured once per run, shared by the settings."""
    results: dict[tuple[str, int], list[float]] = {}
    for r in range(runs):
        for name, flags in settings:
            for n in counts:
                key = ("-", 0) if n == 0 else (name, n)
                if n == 0 and len(results.get(key, [])) > r:
                    continue
                with replicas(n, endpoint, flags):
                    time.sleep(warmup_s)
                    pct = measure(pid, window_s)
                results.setdefault(key, []).append(pct)
                print(f"run {r + 1}/{runs} {key[0]} x{n}: {pct:.2f}% of a core", file=sys.stderr, flush=True)
    return [Cell(s, n, v) for (s, n), v in results.items()]


def report(cells: Sequence[Cell], target: str) -> str:
    base = next((c.median for c in cells if c.replicas == 0), 0.0)
    lines = [
        f"pod CPU at idle ({target}), % of one core: median [min-max] of {len(cells[0].cpu_pct)} runs",
        f"{'setting':<10} {'replicas':>8} {'cpu %':>8} {'range':>15} {'per replica':>12}",
    ]
    for c in cells:
        per = (c.median - base) / c.replicas if c.replicas else 0.0
        spread = f"{min(c.cpu_pct):.2f}-{max(c.cpu_pct):.2f}"
        lines.append(f"{c.setting:<10} {c.replicas:>8} {c.median:>8.2f} {spread:>15} {per:>12.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scrape_cost", description=__doc__)
    p.add_argument(
        "--setting",
        action="append",
        type=parse_setting,
        default=None,
        metavar="NAME=FLAGS",
        help="gateway scrape flags to measure; repeatable (default: old=50 ms fixed, new=defaults)",
    )
    p.add_argument("--replicas", default="0,1,2", help="epp replica counts, comma-separated (default 0,1,2)")
    p.add_argument("--runs", type=int, default=3, help="runs per cell (default 3)")
    p.add_argument("--window", type=float, default=10.0, help="seconds measured per cell (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds after the replicas start (default 2)")
    p.add_argument("--vllm-url", default=None, help="a running vLLM pod, http://host:port (else a simulator)")
    p.add_argument("--vllm-pid", type=int, default=None, help="with --vllm-url: its API server's pid")
    p.add_argument("--json", type=Path, default=None, help="also write the cells here")
    args = p.parse_args(argv)
    settings = args.setting or [parse_setting(s) for s in DEFAULT_SETTINGS]
    counts = [int(x) for x in args.replicas.split(",")]
    with contextlib.ExitStack() as stack:
        if args.vllm_url is not None:
            if args.vllm_pid is None:
                p.error("--vllm-url needs --vllm-pid (the API server process, which serves /metrics)")
            url, pid, target = args.vllm_url, args.vllm_pid, f"vLLM {args.vllm_url}"
        else:
            sim = stack.enter_context(SimProcess(["--pods", "1", "--base-port", "0", "--profile", "tiny"]))
            assert sim.proc is not None
            url, pid, target = sim.urls[0], sim.proc.pid, "simulator, 1 pod"
        endpoint = url.split("://", 1)[-1].rstrip("/")
        cells = run(pid, endpoint, settings, counts, args.runs, args.window, args.warmup)
    text = report(cells, target)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(c) for c in cells], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
