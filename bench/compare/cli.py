"""`epp bench compare`: flags, then run every variant, print the table, write JSON, Markdown and a PNG."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from rich.console import Console

from bench.compare.matrix_cli import (
    add_pod_cpus_argument,
    add_run_arguments,
    parse_endpoint_urls,
    parse_pod_cpus,
    run_matrix_command,
)
from bench.compare.provenance import command_line, machine_info
from bench.compare.report import rich_table, rows_of, write_reports
from bench.compare.runner import CompareSpec, VariantResult, run_comparison
from bench.compare.variants import DEFAULT_STRATEGIES, DIRECT, build_variants, parse_strategy_list
from bench.cpu_pinning import cpu_placement
from bench.multi_round_qa import BenchConfig
from bench.multi_round_qa.args import add_workload_arguments, workload_fields
from bench.peers import available_peers
from bench.sim.profiles import PROFILES, get_profile
from epp.config.errors import ConfigError

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
COMPARE_DESCRIPTION = (
    "Runs the same multi-round QA workload through `epp gateway` once per routing strategy (and per "
    "--config file, and through peer routers with --peers), each time on a fresh `epp sim` fleet with the "
    "same profile and seed, then tabulates TTFT, throughput, prefix-cache hit rate and per-pod shares."
)
# The headline workload (docs/benchmarks.md): 4 A10 pods hold 84,800 tokens of KV each, and 45 users'
# conversations (4-6.5K tokens each) add up to over 200K. Round-robin sends each user's rounds to every pod
# in turn, so every pod would need all of them: it keeps evicting and re-prefilling. Prefix affinity keeps a
# user on one pod: about 60K tokens per pod, which fits. 45 users, not 44 or 48: with a user count that the
# pod count divides, periodic arrivals would make round-robin send each user to the same pod every time.
# 20 rounds: a user's first request is a cold prefill whatever the routing, and those must stay well under
# 10% of the requests for p90 to measure routing. At 3.5 QPS round-robin is close to saturation.
HEADLINE_WORKLOAD: dict[str, float] = {
    "num_users": 45,
    "num_rounds": 20,
    "qps": 3.5,
    "shared_system_prompt": 1000,
    "user_history_prompt": 3000,
    "answer_len": 100,
    "time": 240.0,
    "log_interval": 1e9,
}
# Stands for the front end's URL, which each variant replaces with its own.
_PLACEHOLDER_URL = "http://127.0.0.1/v1"


def add_compare_arguments(
    p: argparse.ArgumentParser,
    workload: dict[str, float] = HEADLINE_WORKLOAD,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    results_prefix: str = "compare",
) -> None:
    """The flags of `epp bench compare`; `epp demo` has the same with its own defaults."""
    add_workload_arguments(p, workload)
    p.set_defaults(results_prefix=results_prefix)
    p.add_argument(
        "--strategies",
        default=",".join(strategies),
        help=f"Comma-separated gateway strategies, in run order (default %(default)s); {DIRECT} sends to "
        "the pods in turn from the client, without any router; PRECISE is the precise prefix scorer over the "
        "pods' KV events; NAME@N runs `epp gateway --workers N`",
    )
    p.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        help="An EndpointPickerConfig file to compare too (repeatable)",
    )
    p.add_argument("--peers", action="store_true", help="Also run sglang-router / vllm-router if installed")
    p.add_argument(
        "--endpoints",
        help="host:port,... of running pods to use instead of a fresh simulated fleet per variant",
    )
    p.add_argument("--pods", type=int, default=4, help="Simulated pods (default %(default)s)")
    add_pod_cpus_argument(p)
    p.add_argument(
        "--profile",
        default="qwen2.5-7b-a10",
        choices=sorted(PROFILES),
        help="Simulator profile (%(default)s)",
    )
    p.add_argument("--model", help="Model sent in requests (default: the profile's model)")
    p.add_argument(
        "--time-scale",
        type=float,
        help="Simulated s per wall s (default 2 on the simulator, 1 with --endpoints: real time)",
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the simulator, gateway and prompts")
    p.add_argument(
        "--output-dir", type=Path, help=f"Where results go (default {RESULTS_DIR}/{results_prefix}-<time>)"
    )
    p.add_argument(
        "--workload",
        help="Run this named workload of `epp bench matrix` (docs/workloads.md) instead of the shape flags, "
        "each variant --runs times with different seeds",
    )
    add_run_arguments(p)


def _peer_names(wanted: bool, notes: list[str]) -> list[str]:
    if not wanted:
        return []
    found = available_peers()
    if not found:
        notes.append("--peers: neither sglang-router nor vllm-router is installed (pip install '.[peers]')")
    return found


def build_spec(args: argparse.Namespace, notes: list[str]) -> CompareSpec:
    """The comparison the flags describe; ValueError, ValidationError or ConfigError when invalid."""
    endpoints = parse_endpoint_urls(args.endpoints) if args.endpoints else None
    # Real pods run in real time: a scale other than 1 would stretch their TTFTs.
    time_scale = args.time_scale or (1.0 if endpoints is not None else 2.0)
    if args.pods < 1 or time_scale <= 0:
        raise ValueError("--pods must be at least 1 and --time-scale positive")
    if endpoints is not None:
        if not args.model:
            raise ValueError("--model is required with --endpoints")
        notes.append(
            "--endpoints: every variant ran on the same running pods, in turn, after POST "
            "/reset_prefix_cache (or, where a pod refused it, with prompts salted per variant so no variant "
            "found another's prefixes cached)"
        )
    variants = build_variants(
        parse_strategy_list(args.strategies), args.config, _peer_names(args.peers, notes)
    )
    workload = BenchConfig(
        **workload_fields(args),
        model=args.model or get_profile(args.profile).model,
        base_urls=(_PLACEHOLDER_URL,),
        seed=args.seed,
        time_scale=time_scale,
    )
    output_dir = args.output_dir or RESULTS_DIR / f"{args.results_prefix}-{datetime.now():%Y%m%d-%H%M%S}"
    return CompareSpec(
        workload,
        variants,
        output_dir,
        args.pods,
        args.profile,
        time_scale,
        args.seed,
        endpoints,
        parse_pod_cpus(args, endpoints),
    )


def report_context(
    spec: CompareSpec, notes: Sequence[str], machine_start: dict[str, Any], command: str
) -> dict[str, Any]:
    workload = spec.workload.model_dump(
        mode="json", exclude={"base_urls", "output", "api_key", "show_progress"}
    )
    fleet: dict[str, Any] = (
        {"endpoints": list(spec.endpoints)}
        if spec.endpoints is not None
        else {"pods": spec.pods, "profile": spec.profile, "time_scale": spec.time_scale, "seed": spec.seed}
    )
    fleet.update(cpu_placement(spec.pod_cpus))
    return {
        "command": command,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine_at_start": machine_start,
        "machine_at_end": machine_info(),
        "workload": workload,
        "fleet": fleet,
        "notes": list(notes),
    }


def _key_values(fields: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in fields.items() if value is not None)


def markdown_intro(context: dict[str, Any]) -> str:
    lines = [
        f"`{context['command']}`",
        "",
        "- workload: " + _key_values(context["workload"]),
        "- fleet: " + _key_values(context["fleet"]),
    ]
    machine = context["machine_at_start"]
    lines.append(f"- machine: nproc={machine['nproc']}, {machine['cpu']}, load average {machine['loadavg']}")
    lines += [f"- note: {note}" for note in context["notes"]]
    return "\n".join(lines) + "\n"


def finish_report(
    spec: CompareSpec, results: Sequence[VariantResult], context: dict[str, Any], console: Console
) -> None:
    """Print the table and write compare.json, compare.md and compare.png into the output directory."""
    rows = rows_of(results)
    fleet = "given endpoints" if spec.endpoints else f"{spec.pods} simulated pods ({spec.profile})"
    title = (
        f"{spec.workload.num_users} users x {spec.workload.num_rounds} rounds, {spec.workload.qps} QPS, "
        f"{fleet}"
    )
    console.print(rich_table(rows, title))
    for note in context["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    json_path, md_path = write_reports(rows, context, markdown_intro(context), spec.output_dir)
    runs = [(r.variant.name, r.bench.records, r.bench.duration) for r in results]
    from bench.compare.plot import plot_comparison  # matplotlib: only when a comparison ran

    png = plot_comparison(runs, spec.output_dir / "compare.png", title)
    console.print(f"Results: {json_path}, {md_path}; plot: {png}; per-request CSVs in {spec.output_dir}")


def run_compare(args: argparse.Namespace, console: Console | None = None) -> int:
    if getattr(args, "workload", None):
        return run_matrix_command(args, args.workload, console)
    # Not a terminal (a log, CI): wide enough that the table does not wrap.
    console = console or Console(width=None if sys.stdout.isatty() else 180)
    notes: list[str] = []
    machine_start = machine_info()
    try:
        spec = build_spec(args, notes)
    except (ValidationError, ValueError, ConfigError) as exc:
        print(f"epp bench compare: invalid arguments: {exc}", file=sys.stderr)
        return 2
    done: list[VariantResult] = []
    code = 0
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_comparison(spec, console, on_result=done.append)
    except KeyboardInterrupt:
        code = 130
        notes.append(f"interrupted after {len(done)} of {len(spec.variants)} variants")
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        code = 1
        notes.append(f"stopped after {len(done)} of {len(spec.variants)} variants: {exc}")
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code:
        print(f"epp bench compare: {notes[-1]}", file=sys.stderr)
    if done:
        finish_report(spec, done, report_context(spec, notes, machine_start, command_line(args)), console)
    return code


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like ^C, so the fleet and front end of the running variant are stopped."""
    raise KeyboardInterrupt
