"""`python -m bench.litellm_compare`: one provider fault through direct, LiteLLM's proxy and epp gateway."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.litellm_compare.configs import Policy
from bench.litellm_compare.procs import LITELLM_VERSION, ensure_litellm_venv
from bench.litellm_compare.report import format_report
from bench.litellm_compare.scenario import Scenario, SystemResult, run_system
from bench.litellm_compare.systems import SYSTEMS, NotRunnable, SystemContext

REPO = Path(__file__).resolve().parents[2]


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.litellm_compare",
        description="Two simulated providers A and B, 50/50, B -> A fallback; B answers 503 for a window. "
        "Reports client-visible errors, requests reaching B while broken, B's recovery time and added "
        "latency (fault-free phase, against direct) per system: median [range] over seeds.",
    )
    p.add_argument("--systems", type=_csv, default=list(SYSTEMS), help="comma-separated: direct,litellm,epp")
    p.add_argument("--seeds", type=lambda t: [int(v) for v in _csv(t)], default=[1, 2, 3])
    p.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients")
    p.add_argument("--steady-clients", type=int, default=1, help="concurrent clients of the latency phase")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of the fault phase")
    p.add_argument("--steady", type=float, default=10.0, help="seconds of fault-free load for latency")
    p.add_argument("--fault-start", type=float, default=5.0, help="B breaks this far into the fault phase")
    p.add_argument("--fault-length", type=float, default=10.0, help="seconds B answers 503")
    p.add_argument("--ejection-time", type=float, default=5.0, help="baseEjectionTime / cooldown_time, s")
    p.add_argument("--consecutive-5xx", type=int, default=1, help="consecutive5xxErrors / allowed_fails+1")
    p.add_argument(
        "--litellm-venv",
        type=Path,
        default=REPO.parent / ".venv-litellm",
        help="venv for litellm[proxy], created on first use (default: .venv-litellm next to the repo)",
    )
    p.add_argument("--litellm-port", type=int, default=0, help="LiteLLM's port (0: a free one)")
    p.add_argument("--output", type=Path, help="also write the report to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or args.clients < 1 or args.fault_start + args.fault_length >= args.duration:
        print("bench.litellm_compare: bad --systems, --clients or fault window", file=sys.stderr)
        return 2
    scenario = Scenario(
        clients=args.clients,
        steady_clients=args.steady_clients,
        steady_s=args.steady,
        run_s=args.duration,
        fault_start_s=args.fault_start,
        fault_s=args.fault_length,
        policy=Policy(args.consecutive_5xx, args.ejection_time),
    )
    exe = ensure_litellm_venv(args.litellm_venv) if "litellm" in args.systems else None

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: list[SystemResult] = []
    skipped: dict[str, str] = {}
    for seed in args.seeds:
        ctx = SystemContext(scenario.policy, seed, exe, args.litellm_port)
        for system in args.systems:
            if system in skipped:
                continue
            try:
                results.append(run_system(system, scenario, ctx, log))
            except NotRunnable as exc:
                skipped[system] = str(exc)
                log(f"{system}: skipped: {exc}")
    command = shlex.join(
        ["python", "-m", "bench.litellm_compare", *(argv if argv is not None else sys.argv[1:])]
    )
    header = (
        f"`{command}` — latency: {args.steady_clients} client(s) for {args.steady:g}s without fault; "
        f"fault phase: {args.clients} clients for {args.duration:g}s with B broken for "
        f"{args.fault_length:g}s; ejection/cooldown {args.ejection_time:g}s after "
        f"{args.consecutive_5xx} 5xx, "
        f"LiteLLM {LITELLM_VERSION}; seeds {','.join(map(str, args.seeds))}\n\n"
    )
    report = header + format_report(results, skipped)
    print(report)
    if args.output is not None:
        args.output.write_text(report)
    return 0
