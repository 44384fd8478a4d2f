"""`epp bench multi-round-qa` (production-stack compatible load generator) and `epp demo`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench.demo import add_demo_arguments, run_demo
from bench.multi_round_qa import BenchConfig, format_summary, run_benchmark
from bench.multi_round_qa.config import parse_base_urls
from bench.multi_round_qa.sharegpt import DEFAULT_SAMPLE, ShareGPTError


def register(subparsers: Any) -> None:
    """Add `bench` (with `multi-round-qa`) and `demo` to the `epp` command."""
    bench = subparsers.add_parser("bench", help="Benchmarks against OpenAI-compatible servers")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    mrqa = bench_sub.add_parser(
        "multi-round-qa",
        help="Multi-round chat QA load (vLLM production-stack's multi-round-qa.py)",
        description="Users with a shared system prompt and their own history ask questions round by round.",
    )
    add_multi_round_qa_arguments(mrqa)
    mrqa.set_defaults(func=run_multi_round_qa)

    demo = subparsers.add_parser("demo", help="Run a short multi-round QA load against a simulated fleet")
    add_demo_arguments(demo)
    demo.set_defaults(func=run_demo)


def add_multi_round_qa_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-users", type=int, required=True, help="Active users in the steady state")
    p.add_argument("--num-rounds", type=int, required=True, help="Questions each user asks")
    p.add_argument("--qps", type=float, required=True, help="Overall request rate (per simulated second)")
    p.add_argument("--shared-system-prompt", type=int, required=True, help="Shared system prompt (tokens)")
    p.add_argument("--user-history-prompt", type=int, required=True, help="Per-user history prompt (tokens)")
    p.add_argument("--answer-len", type=int, required=True, help="Answer length (tokens), sent as max_tokens")
    p.add_argument("--model", required=True, help="Model name sent in each request")
    p.add_argument(
        "--base-url",
        required=True,
        help="OpenAI base URL such as http://127.0.0.1:8000/v1; a comma-separated list is used in turn",
    )
    p.add_argument("--api-key", default="EMPTY", help="Bearer token (default: EMPTY)")
    p.add_argument("--time", type=float, help="Seconds (simulated) to launch requests for; default: until ^C")
    p.add_argument(
        "--sharegpt",
        nargs="?",
        type=Path,
        const=DEFAULT_SAMPLE,
        help="Take questions from a ShareGPT JSON file (the shipped generated sample when no path is given)",
    )
    p.add_argument("--init-user-id", type=int, default=0, help="Id of the first user")
    p.add_argument(
        "--request-with-user-id",
        action="store_true",
        help="Send the user id in the request (`user` field and x-user-id header)",
    )
    p.add_argument("--log-interval", type=float, default=30.0, help="Seconds (simulated) between summaries")
    p.add_argument("--output", type=Path, default=Path("summary.csv"), help="Per-request CSV file")
    p.add_argument("--seed", type=int, default=0, help="Seed of the generated prompt texts")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="Simulated seconds per wall second of the target (a simulator's --time-scale); default 1",
    )
    p.add_argument("--request-timeout", type=float, default=600.0, help="Wall s to connect or await a chunk")
    p.add_argument("--no-progress", action="store_true", help="Do not show the progress bar")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig of parsed `multi-round-qa` arguments; ValueError/ValidationError when invalid."""
    return BenchConfig(
        num_users=args.num_users,
        num_rounds=args.num_rounds,
        qps=args.qps,
        shared_system_prompt=args.shared_system_prompt,
        user_history_prompt=args.user_history_prompt,
        answer_len=args.answer_len,
        model=args.model,
        base_urls=parse_base_urls(args.base_url),
        time=args.time,
        sharegpt=args.sharegpt,
        init_user_id=args.init_user_id,
        request_with_user_id=args.request_with_user_id,
        log_interval=args.log_interval,
        output=args.output,
        seed=args.seed,
        time_scale=args.time_scale,
        api_key=args.api_key,
        request_timeout=args.request_timeout,
        show_progress=not args.no_progress,
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
