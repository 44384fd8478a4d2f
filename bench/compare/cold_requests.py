"""First requests in a matrix's runs: each user's (each document's, each trace session's) first request finds
nothing of its own cached on any pod, whatever the router. When they are a tenth of a run's requests or more,
no router's p90 can fall below the fastest of them, which caps the p90 gain any router can show.

    python -m bench.compare.cold_requests MATRIX_DIR [--workloads NAME,...] [--baseline SLUG]

Reads the per-request CSVs `epp bench matrix` writes (MATRIX_DIR/<workload>/<slug>-run<N>-seed<S>.csv, the
requests that finished with a TTFT) and prints, per workload and variant, the median over its runs of: the
requests, the share that are first requests (first of their user_id), the fastest and the median first-request
TTFT, p90, and p90 of the other requests. Per workload, where in most runs the first requests reach p90's rank
(a tenth of the requests, give or take one): in how many, the fastest first request of any run (close to an
idle pod's prefill of it: a floor for p90), and the best p90 ratio a router could then reach against the
baseline's median p90.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.compare.matrix import RUN_CSV
from bench.multi_round_qa.summary import percentile


@dataclass(frozen=True)
class RunCold:
    requests: int
    first: int
    first_min: float
    first_median: float
    p90: float
    p90_rest: float

    @property
    def first_share(self) -> float:
        return self.first / self.requests


def run_cold(path: Path) -> RunCold:
    """The first-request figures of one run's CSV, its rows taken in launch order."""
    seen: set[str] = set()
    first: list[float] = []
    rest: list[float] = []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: float(r["launch_time"]))
    for row in rows:
        user = row["user_id"]
        if row["status"] == "ok" and row["ttft"]:
            (rest if user in seen else first).append(float(row["ttft"]))
        seen.add(user)  # a failed first request still warmed nothing: its retry counts as a later one
    if not first:
        raise ValueError(f"{path}: no finished request with a TTFT")
    everything = first + rest
    return RunCold(
        len(everything),
        len(first),
        min(first),
        statistics.median(first),
        percentile(everything, 90),
        percentile(rest, 90),
    )


def p90_is_first_or_slower(run: RunCold) -> bool:
    """Whether p90 (interpolated at rank 0.9 x (n - 1)) lies among the run's `first` slowest requests, so is
    at least its fastest first request."""
    return run.first >= run.requests - math.floor(0.9 * (run.requests - 1))


def workload_runs(directory: Path) -> dict[str, list[RunCold]]:
    """Variant slug -> its runs' figures, for one workload's directory."""
    runs: dict[str, list[RunCold]] = defaultdict(list)
    for path in sorted(directory.glob("*.csv")):
        match = RUN_CSV.match(path.name)
        if match:
            runs[match["slug"]].append(run_cold(path))
    return dict(runs)


_COLUMNS = ("requests", "first_share", "first_min", "first_median", "p90", "p90_rest")


def median_of(cells: Sequence[RunCold], name: str) -> float:
    """The median over runs of one RunCold figure."""
    return float(statistics.median(float(getattr(c, name)) for c in cells))


def markdown(workload: str, runs: dict[str, list[RunCold]], baseline: str) -> str:
    lines = [
        f"#### {workload}",
        "",
        "| variant | runs | requests | first requests | fastest first | median first | p90 | p90 of the rest"
        " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for slug, cells in runs.items():
        med = [median_of(cells, name) for name in _COLUMNS]
        lines.append(
            f"| {slug} | {len(cells)} | {med[0]:.0f} | {med[1]:.1%} | {med[2]:.3f} | {med[3]:.3f} | "
            f"{med[4]:.3f} | {med[5]:.3f} |"
        )
    every = [c for cells in runs.values() for c in cells]
    bound = sum(p90_is_first_or_slower(c) for c in every)
    if bound * 2 > len(every):
        floor = min(c.first_min for c in every)
        lines.append(
            f"\np90 is a first request or slower in {bound} of {len(every)} runs; the fastest first request"
            f" of any run: {floor:.3f} s"
        )
        if baseline in runs:
            base = statistics.median(c.p90 for c in runs[baseline])
            lines[-1] += (
                f"; {baseline}'s median p90 {base:.3f} s: no router's p90 can beat it by more than"
                f" x{base / floor:.3f}"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare.cold_requests", description=__doc__.split("\n")[0]
    )
    parser.add_argument("matrix_dir", type=Path, help="an `epp bench matrix --output-dir`")
    parser.add_argument("--workloads", help="comma-separated workload names (default: every one there)")
    parser.add_argument("--baseline", default="round_robin", help="variant slug to compare with")
    args = parser.parse_args(argv)
    names = args.workloads.split(",") if args.workloads else None
    dirs = sorted(d for d in args.matrix_dir.iterdir() if d.is_dir()) if args.matrix_dir.is_dir() else []
    dirs = [d for d in dirs if names is None or d.name in names]
    if not dirs:
        parser.error(f"{args.matrix_dir}: no workload directory with run CSVs")
    try:
        for directory in dirs:
            runs = workload_runs(directory)
            if runs:
                print(markdown(directory.name, runs, args.baseline))
    except (ValueError, KeyError) as exc:
        print(f"cold_requests: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
