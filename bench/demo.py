"""`epp demo`: a short multi-round QA load against a simulated fleet of vLLM pods, round-robin.

The routing front end is not in the demo yet: requests go to the pods in turn through the client's
comma-separated base URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from bench.multi_round_qa import BenchConfig, format_summary, run_benchmark
from bench.sim.process import SimProcess
from bench.sim.profiles import get_profile

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEMO_PROFILE = "qwen2.5-7b-a10"


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pods", type=int, default=4, help="Simulated pods (default 4)")
    p.add_argument("--profile", default=DEMO_PROFILE, help=f"Simulator profile (default {DEMO_PROFILE})")
    p.add_argument("--time-scale", type=float, default=4.0, help="Simulated seconds per wall second")
    p.add_argument("--time", type=float, default=240.0, help="Simulated seconds of load (default 240)")
    p.add_argument("--qps", type=float, default=2.0, help="Overall request rate (default 2)")
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="Where the CSV goes")
    p.add_argument("--no-progress", action="store_true", help="Do not show the progress bar")


@contextlib.contextmanager
def simulator_fleet(pods: int, profile: str, time_scale: float) -> Iterator[list[str]]:
    """Run `epp sim` on free ports as a subprocess; yields the pods' OpenAI base URLs (…/v1)."""
    args = ["--pods", str(pods), "--base-port", "0", "--profile", profile, "--time-scale", str(time_scale)]
    with SimProcess(args) as sim:
        yield [f"{url}/v1" for url in sim.urls]


def demo_config(args: argparse.Namespace, base_urls: list[str], output: Path) -> BenchConfig:
    """A small multi-round QA workload: long shared and per-user prefixes, several rounds per user."""
    return BenchConfig(
        num_users=16,
        num_rounds=6,
        qps=args.qps,
        shared_system_prompt=1000,
        user_history_prompt=2000,
        answer_len=100,
        model=get_profile(args.profile).model,
        base_urls=tuple(base_urls),
        time=args.time,
        log_interval=args.time + 1,  # one summary at the end is enough for a demo
        output=output,
        time_scale=args.time_scale,
        show_progress=not args.no_progress,
    )


def run_demo(args: argparse.Namespace) -> int:
    try:
        get_profile(args.profile)
    except ValueError as exc:
        print(f"epp demo: {exc}", file=sys.stderr)
        return 2
    output = args.output_dir / f"demo-round-robin-{datetime.now():%Y%m%d-%H%M%S}.csv"
    print(f"Starting {args.pods} simulated pods (profile {args.profile}, time scale {args.time_scale})")
    try:
        with simulator_fleet(args.pods, args.profile, args.time_scale) as base_urls:
            cfg = demo_config(args, base_urls, output)
            result = asyncio.run(run_benchmark(cfg))
    except (RuntimeError, TimeoutError) as exc:
        print(f"epp demo: {exc}", file=sys.stderr)
        return 1
    print("Round-robin over the pods (simulated seconds):")
    print(format_summary(result.summary))
    print(f"Per-request results: {output}")
    return 0
