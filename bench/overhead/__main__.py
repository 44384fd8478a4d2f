"""`python -m bench.overhead`: measure router overhead and throughput against a fast fixed backend."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.overhead.backend import BackendError
from bench.overhead.load import LoadError
from bench.overhead.report import format_report
from bench.overhead.runner import OverheadConfig, run_overhead
from bench.overhead.targets import all_targets, default_target_names

DEFAULT_BASELINE = "sglang-router:cache_aware"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    known = ", ".join(all_targets())
    p = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description="Requests/s, latency and CPU per request of routers in front of a fast fixed backend "
        "(nginx), against sending directly to it. Needs nginx and wrk (scripts/bootstrap.sh installs them).",
    )
    p.add_argument(
        "--targets",
        default=None,
        help=f"comma-separated, in order (default: all, peers only when installed). Known: {known}",
    )
    p.add_argument("--concurrency", type=_int_list, default=[1, 16, 64], help="levels, e.g. 1,16,64")
    p.add_argument("--duration", type=int, default=10, help="seconds of load per target and level")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded load before each target")
    p.add_argument("--pods", type=int, default=4, help="backend pods (nginx server blocks)")
    p.add_argument("--strategy", default="PREFIX_CACHE", help="epp strategy for epp-gateway and envoy-epp")
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="target the ratio columns divide by")
    p.add_argument("--output", type=Path, help="also write the Markdown report to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    targets = all_targets(args.strategy)
    names = args.targets.split(",") if args.targets else default_target_names()
    unknown = [n for n in names if n not in targets]
    if unknown:
        print(f"bench.overhead: unknown targets {unknown}; known: {', '.join(targets)}", file=sys.stderr)
        return 2
    if args.duration < 1 or args.warmup < 0 or args.pods < 1:
        print("bench.overhead: --duration and --pods must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    cfg = OverheadConfig(
        targets=[targets[n] for n in names],
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        pods=args.pods,
    )
    try:
        result = run_overhead(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    except (BackendError, LoadError) as exc:
        print(f"bench.overhead: {exc}", file=sys.stderr)
        return 1
    baseline = args.baseline if args.baseline in names else "direct"
    command = shlex.join(["python", "-m", "bench.overhead", *(sys.argv[1:] if argv is None else argv)])
    report = format_report(result, baseline, command)
    print(report)
    if args.output:
        args.output.write_text(report + "\n", "utf-8")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
