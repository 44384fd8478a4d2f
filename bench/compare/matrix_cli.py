"""`epp bench matrix` and `epp bench compare --workload NAME`: flags, the run, the report files."""

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

from bench.compare.matrix import MatrixSpec, RunResult, run_matrix
from bench.compare.matrix_goals import check_goals
from bench.compare.matrix_goals import markdown as goals_markdown
from bench.compare.matrix_report import cells_by_workload, markdown_table, write_matrix_reports
from bench.compare.provenance import command_line, commit_info, config_hashes, machine_info
from bench.compare.variants import build_variants, parse_strategy_list
from bench.cpu_pinning import cpu_placement, other_cpus, parse_cpu_list
from bench.peers import available_peers
from bench.sim.profiles import PROFILES, get_profile
from bench.workloads.catalog import SCALES, WORKLOADS, parse_workloads
from bench.workloads.trace import TraceError
from epp.config.endpoints import parse_address
from epp.config.errors import ConfigError

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
MATRIX_STRATEGIES = ("ROUND_ROBIN", "PREFIX_CACHE", "LOAD_AWARE", "PREFIX_TOKENS")
MATRIX_DESCRIPTION = (
    "Runs each named workload (docs/workloads.md) through each variant (gateway strategies, --config "
    "files, --peers) several times with different seeds, each run on a fresh `epp sim` fleet (or, with "
    "--endpoints, real pods with their prefix caches reset or the prompts salted per run), and reports "
    "median and min-max of TTFT, throughput, prefix hit rate and the pods' share spread."
)
SIM_TIME_SCALE = 2.0


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Repetition and size flags, shared by `matrix` and `compare --workload`."""
    p.add_argument("--runs", type=int, default=3, help="Runs per variant and workload (default %(default)s)")
    p.add_argument("--seeds", help="Comma-separated seeds, one run each (default: --seed, --seed+1, ...)")
    p.add_argument(
        "--scale",
        default="small",
        choices=list(SCALES),
        help="Duration of each run: " + ", ".join(f"{k} {v:g} s" for k, v in SCALES.items()) + " (simulated)",
    )
    p.add_argument(
        "--duration",
        type=float,
        help="Simulated seconds of arrivals per run, instead of --scale's (a multi-round workload's users "
        "get about duration x QPS / users rounds each)",
    )


def add_pod_cpus_argument(p: argparse.ArgumentParser) -> None:
    """--pod-cpus, shared by `matrix` and `compare`."""
    p.add_argument(
        "--pod-cpus",
        metavar="CPUS",
        help="Run the simulated fleet on these CPUs (e.g. 0 or 0-1, as taskset -c) and the front end, the "
        "peers and the load generator on the others, so the router's CPU use does not slow the simulated "
        "pods (docs/benchmarks.md). Default: everything shares every CPU",
    )


def parse_pod_cpus(args: argparse.Namespace, endpoints: Sequence[str] | None) -> frozenset[int] | None:
    """--pod-cpus as a CPU set (None when not given); ValueError when unusable."""
    text = getattr(args, "pod_cpus", None)
    if not text:
        return None
    if endpoints is not None:
        raise ValueError("--pod-cpus pins the simulated fleet: not with --endpoints")
    pod_cpus = parse_cpu_list(text)
    other_cpus(pod_cpus)  # (raises when the CPUs are unusable or leave none over)
    return pod_cpus


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="List the workloads and exit")
    p.add_argument(
        "--workloads",
        default="all",
        help=f"Comma-separated names or numbers, or all (default): {', '.join(WORKLOADS)}",
    )
    p.add_argument(
        "--strategies",
        default=",".join(MATRIX_STRATEGIES),
        help="Comma-separated gateway strategies, in run order (default %(default)s); PRECISE is the precise "
        "prefix scorer over the pods' KV events; NAME@N runs `epp gateway --workers N`",
    )
    p.add_argument(
        "--config", type=Path, action="append", default=[], help="EndpointPickerConfig (repeatable)"
    )
    p.add_argument("--peers", action="store_true", help="Also run sglang-router / vllm-router if installed")
    p.add_argument(
        "--endpoints", help="host:port,... of running pods instead of a fresh simulated fleet per run"
    )
    p.add_argument("--pods", type=int, default=4, help="Simulated pods (default %(default)s)")
    add_pod_cpus_argument(p)
    p.add_argument("--profile", default="qwen2.5-7b-a10", choices=sorted(PROFILES), help="Simulator profile")
    p.add_argument("--model", help="Model sent in requests (default: the profile's model)")
    p.add_argument(
        "--time-scale",
        type=float,
        help=f"Simulated s per wall s (default {SIM_TIME_SCALE:g} on the simulator, 1 with --endpoints)",
    )
    p.add_argument("--seed", type=int, default=0, help="First seed when --seeds is not given")
    p.add_argument(
        "--goals-for",
        metavar="VARIANT",
        help="Also judge this variant against issue 16's goals (bench/compare/matrix_goals.py) in matrix.md",
    )
    p.add_argument("--output-dir", type=Path, help=f"Where results go (default {RESULTS_DIR}/matrix-<time>)")
    add_run_arguments(p)


def parse_seeds(args: argparse.Namespace) -> list[int]:
    """--seeds, else --runs seeds from --seed; ValueError when malformed or repeated."""
    if args.seeds:
        try:
            seeds = [int(part) for part in args.seeds.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds needs distinct integers, got {args.seeds!r}")
        return seeds
    if args.runs < 1:
        raise ValueError("--runs must be at least 1")
    return list(range(args.seed, args.seed + args.runs))


def parse_endpoint_urls(text: str) -> list[str]:
    """`host:port,...` -> root URLs; ValueError when an address is malformed."""
    urls = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            host, port = parse_address(part)
            urls.append(f"http://{host}:{port}")
    if not urls:
        raise ValueError("--endpoints needs at least one host:port")
    return urls


def build_matrix_spec(args: argparse.Namespace, workloads_text: str, notes: list[str]) -> MatrixSpec:
    """The matrix the flags describe; ValueError, ValidationError or ConfigError when invalid."""
    endpoints = parse_endpoint_urls(args.endpoints) if args.endpoints else None
    time_scale = args.time_scale or (1.0 if endpoints else SIM_TIME_SCALE)
    if args.pods < 1 or time_scale <= 0:
        raise ValueError("--pods must be at least 1 and --time-scale positive")
    duration = getattr(args, "duration", None)
    if duration is not None and duration <= 0:
        raise ValueError("--duration must be positive")
    if endpoints is not None and not args.model:
        raise ValueError("--model is required with --endpoints")
    pod_cpus = parse_pod_cpus(args, endpoints)
    peers: list[str] = []
    if args.peers:
        peers = available_peers()
        if not peers:
            notes.append(
                "--peers: neither sglang-router nor vllm-router is installed (pip install '.[peers]')"
            )
    variants = build_variants(parse_strategy_list(args.strategies), args.config, peers)
    goals_for = getattr(args, "goals_for", None)
    if goals_for and goals_for not in [v.name for v in variants]:
        raise ValueError(
            f"--goals-for {goals_for!r} is not one of the variants ({', '.join(v.name for v in variants)})"
        )
    workloads = parse_workloads(workloads_text)
    if endpoints is not None and any(w.lora_modules for w in workloads):
        notes.append("lora-mix on --endpoints: the pods must serve adapter-0..adapter-3 with --max-loras 2")
    output_dir = args.output_dir or RESULTS_DIR / f"matrix-{datetime.now():%Y%m%d-%H%M%S}"
    spec = MatrixSpec(
        workloads,
        variants,
        parse_seeds(args),
        output_dir,
        args.scale,
        args.pods,
        args.profile,
        time_scale,
        args.model,
        endpoints,
        duration_s=duration,
        pod_cpus=pod_cpus,
    )
    get_profile(spec.profile)
    return spec


def matrix_context(
    spec: MatrixSpec, notes: Sequence[str], start: dict[str, Any], command: str, commit: dict[str, Any]
) -> dict[str, Any]:
    """The report's provenance; `start` (the machine) and `commit` (the tree) as they were when it started."""
    fleet: dict[str, Any] = (
        {"endpoints": list(spec.endpoints)}
        if spec.endpoints is not None
        else {"pods": spec.pods, "profile": spec.profile}
    )
    fleet.update(cpu_placement(spec.pod_cpus))
    return {
        "command": command,
        **commit,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scale": spec.scale if spec.duration_s is None else "custom (--duration)",
        "duration_s": spec.duration,
        "time_scale": spec.time_scale,
        "seeds": list(spec.seeds),
        "model": spec.model_name,
        "fleet": fleet,
        "config_hashes": config_hashes(spec.variants),
        "machine_at_start": start,
        "machine_at_end": machine_info(),
        "notes": list(notes),
    }


def markdown_intro(context: dict[str, Any]) -> str:
    machine = context["machine_at_start"]
    dirty = " (with uncommitted changes)" if context["dirty"] else ""
    hashes = ", ".join(f"{k}={v}" for k, v in context["config_hashes"].items() if v)
    lines = [
        "# Workload matrix",
        "",
        f"`{context['command']}`",
        "",
        f"- commit: {context['commit']}{dirty}",
        f"- scale: {context['scale']} ({context['duration_s']:g} simulated s per run), "
        f"time scale {context['time_scale']:g}, seeds {context['seeds']}",
        "- fleet: "
        + ", ".join(f"{k}={v}" for k, v in context["fleet"].items())
        + f", model {context['model']}",
        f"- config sha256: {hashes}",
        f"- machine: nproc={machine['nproc']}, {machine['cpu']}, load average {machine['loadavg']} at start, "
        f"{context['machine_at_end']['loadavg']} at end",
    ]
    lines += [f"- note: {note}" for note in context["notes"]]
    return "\n".join(lines) + "\n"


def run_matrix_command(args: argparse.Namespace, workloads_text: str, console: Console | None = None) -> int:
    """Run the matrix; print each workload's table, write matrix.json and matrix.md. Exit code."""
    console = console or Console(width=None if sys.stdout.isatty() else 180)
    name = "compare" if getattr(args, "workload", None) else "matrix"
    notes: list[str] = []
    start = machine_info()
    commit = commit_info()  # the code that runs: the tree may change while a long matrix goes on
    try:
        spec = build_matrix_spec(args, workloads_text, notes)
    except (ValidationError, ValueError, ConfigError) as exc:
        print(f"epp bench {name}: invalid arguments: {exc}", file=sys.stderr)
        return 2
    done: list[RunResult] = []
    total = len(spec.workloads) * len(spec.variants) * len(spec.seeds)
    code = 0
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_matrix(spec, console, on_result=done.append)
    except KeyboardInterrupt:
        code = 130
        notes.append(f"interrupted after {len(done)} of {total} runs")
    except (RuntimeError, TimeoutError, httpx.HTTPError, TraceError) as exc:
        code = 1
        notes.append(f"stopped after {len(done)} of {total} runs: {exc}")
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code:
        print(f"epp bench {name}: {notes[-1]}", file=sys.stderr)
    if done:
        context = matrix_context(spec, notes, start, command_line(args), commit)
        for workload, cells in cells_by_workload(done).items():
            console.print(f"\n[bold]{workload}[/]\n{markdown_table(cells)}")
        json_path, md_path, document = write_matrix_reports(
            context, markdown_intro(context), done, spec.output_dir
        )
        goals_for = getattr(args, "goals_for", None)
        if goals_for:
            goals = goals_markdown(check_goals(document, goals_for), goals_for)
            with md_path.open("a", encoding="utf-8") as md:
                md.write("\n## Goals (issue 16)\n\n" + goals)
            console.print(f"\n[bold]Goals[/]\n{goals}")
        console.print(f"Results: {json_path}, {md_path}; per-request CSVs in {spec.output_dir}/<workload>/")
    return code


def run_matrix_cli(args: argparse.Namespace) -> int:
    """Entry point of `epp bench matrix`."""
    if args.list:
        for w in WORKLOADS.values():
            print(f"{w.number}  {w.name:<22} {w.summary}")
        return 0
    return run_matrix_command(args, args.workloads)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like ^C, so the running fleet and front end are stopped."""
    raise KeyboardInterrupt
