"""`epp bench multi-round-qa` (production-stack compatible load), `compare`, `matrix` and `epp demo`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench.compare.cli import COMPARE_DESCRIPTION, add_compare_arguments, run_compare
from bench.compare.matrix_cli import MATRIX_DESCRIPTION, add_matrix_arguments, run_matrix_cli
from bench.demo import add_demo_arguments, run_demo
from bench.multi_round_qa import BenchConfig, format_summary, run_benchmark
from bench.multi_round_qa.args import add_workload_arguments, workload_fields
from bench.multi_round_qa.config import parse_base_urls
from bench.multi_round_qa.sharegpt import ShareGPTError


def register(subparsers: Any) -> None:
    """Add `bench` (with `multi-round-qa` and `compare`) and `demo` to the `epp` command."""
    bench = subparsers.add_parser("bench", help="Benchmarks against OpenAI-compatible servers")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    mrqa = bench_sub.add_parser(
        "multi-round-qa",
        help="Multi-round chat QA load (vLLM production-stack's multi-round-qa.py)",
        description="Users with a shared system prompt and their own history ask questions round by round.",
    )
    add_multi_round_qa_arguments(mrqa)
    mrqa.set_defaults(func=run_multi_round_qa)

    compare = bench_sub.add_parser(
        "compare",
        help="Compare routing strategies on the same multi-round QA workload (fresh simulated fleet each)",
        description=COMPARE_DESCRIPTION,
    )
    add_compare_arguments(compare)
    compare.set_defaults(func=run_compare)

    matrix = bench_sub.add_parser(
        "matrix",
        help="Every named workload x routing strategy, several seeds each (docs/workloads.md)",
        description=MATRIX_DESCRIPTION,
    )
    add_matrix_arguments(matrix)
    matrix.set_defaults(func=run_matrix_cli)

    demo = subparsers.add_parser(
        "demo", help="Compare routing strategies on a simulated fleet for about 2 minutes"
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=run_demo)


def add_multi_round_qa_arguments(p: argparse.ArgumentParser) -> None:
    add_workload_arguments(p)
    p.add_argument("--model", required=True, help="Model name sent in each request")
    p.add_argument(
        "--base-url",
        required=True,
        help="OpenAI base URL such as http://127.0.0.1:8000/v1; a comma-separated list is used in turn",
    )
    p.add_argument("--output", type=Path, default=Path("summary.csv"), help="Per-request CSV file")
    p.add_argument("--seed", type=int, default=0, help="Seed of the generated prompt texts")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="Simulated seconds per wall second of the target (a simulator's --time-scale); default 1",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig of parsed `multi-round-qa` arguments; ValueError/ValidationError when invalid."""
    return BenchConfig(
        **workload_fields(args),
        model=args.model,
        base_urls=parse_base_urls(args.base_url),
        output=args.output,
        seed=args.seed,
        time_scale=args.time_scale,
    )


async def run_until_interrupted(cfg: BenchConfig) -> str:
    """Run the benchmark; ^C stops launching and still reports. Returns the formatted summary."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        result = await run_benchmark(cfg, stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return format_summary(result.summary)


def run_multi_round_qa(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        summary = asyncio.run(run_until_interrupted(cfg))
    except (ValidationError, ValueError) as exc:
        # ShareGPTError is a ValueError: the file problem is in its message.
        label = "ShareGPT data" if isinstance(exc, ShareGPTError) else "invalid arguments"
        print(f"epp bench multi-round-qa: {label}: {exc}", file=sys.stderr)
        return 2
    print(summary)
    print(f"Per-request results: {cfg.output}")
    return 0
