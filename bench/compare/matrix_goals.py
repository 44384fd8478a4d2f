"""Issue 16's goals, checked on a matrix report (matrix.json): each met or missed, with the figures.

    python -m bench.compare.matrix_goals bench/results/matrix-.../matrix.json --candidate PREFIX_TOKENS

All comparisons are between medians over a cell's runs (seeds):
- tail: the candidate's p90 and p99 TTFT at most 1.05x round-robin's, on every workload;
- gain: mean and p90 TTFT at least 2x better than round-robin's on workloads 1-4 and 6;
- peers: mean, p90 and p99 TTFT no worse than the best peer router's (the lowest median of each figure
  among the peers that ran), on every workload;
- balance: the pods' max/min share at most 1.5 on workloads 2 and 5.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.workloads.catalog import WORKLOADS

BASELINE = "ROUND_ROBIN"
PEER_KIND = "peer router"
TAIL_BOUND = 1.05
GAIN_FACTOR = 2.0
GAIN_WORKLOADS = (1, 2, 3, 4, 6)
SHARE_BOUND = 1.5
SHARE_WORKLOADS = (2, 5)
TTFT_LABELS = {"mean_ttft": "mean", "p90_ttft": "p90", "p99_ttft": "p99"}


@dataclass(frozen=True)
class GoalCheck:
    """One goal on one workload and figure: `value` against `reference` (its bound, or whom it is compared
    with), and whether it is met (None: a figure is missing, so it cannot be judged)."""

    goal: str
    workload: str
    figure: str
    value: float
    reference: float
    against: str
    met: bool | None


def _median(variant: Mapping[str, Any], figure: str) -> float:
    """The figure's median; the JSON writes infinities as null, so null over some runs is infinite (a
    pod that got no request makes the share ratio inf); NaN when no run had the figure."""
    spread = variant.get("figures", {}).get(figure)
    if not spread:
        return math.nan
    value = spread.get("median")
    if value is None:
        return math.inf if spread.get("runs") else math.nan
    return float(value)


def _number(workload: str) -> int | None:
    known = WORKLOADS.get(workload)
    return known.number if known else None


def _judge(ok: bool, *values: float) -> bool | None:
    return None if any(math.isnan(v) for v in values) else ok


def check_goals(doc: Mapping[str, Any], candidate: str) -> list[GoalCheck]:
    """Every goal the document lets one judge for `candidate` (a variant name), workload by workload."""
    checks: list[GoalCheck] = []
    for workload, entry in doc["workloads"].items():
        variants: Mapping[str, Any] = entry["variants"]
        mine = variants.get(candidate)
        if mine is None:
            continue
        number = _number(workload)
        base = variants.get(BASELINE)
        if base is not None:
            for figure in ("p90_ttft", "p99_ttft"):
                value, ref = _median(mine, figure), _median(base, figure)
                bound = TAIL_BOUND * ref
                checks.append(
                    GoalCheck(
                        "tail", workload, figure, value, ref, BASELINE, _judge(value <= bound, value, ref)
                    )
                )
            if number in GAIN_WORKLOADS:
                for figure in ("mean_ttft", "p90_ttft"):
                    value, ref = _median(mine, figure), _median(base, figure)
                    ok = value > 0 and ref / value >= GAIN_FACTOR
                    checks.append(
                        GoalCheck("gain", workload, figure, value, ref, BASELINE, _judge(ok, value, ref))
                    )
        peers = {name: v for name, v in variants.items() if v.get("kind") == PEER_KIND}
        for figure in TTFT_LABELS:
            known = {n: _median(v, figure) for n, v in peers.items()}
            known = {n: x for n, x in known.items() if not math.isnan(x)}
            if not known:
                continue
            best = min(known, key=lambda n: known[n])
            value = _median(mine, figure)
            checks.append(
                GoalCheck(
                    "peers", workload, figure, value, known[best], best, _judge(value <= known[best], value)
                )
            )
        if number in SHARE_WORKLOADS:
            value = _median(mine, "share_ratio")
            checks.append(
                GoalCheck(
                    "balance",
                    workload,
                    "share_ratio",
                    value,
                    SHARE_BOUND,
                    "bound",
                    _judge(value <= SHARE_BOUND, value),
                )
            )
    return checks


def _fmt(figure: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if figure == "share_ratio" else f"{value:.3f}"


def _ratio(check: GoalCheck) -> str:
    """How the value stands against its reference, in the goal's own terms."""
    v, r = check.value, check.reference
    if any(math.isnan(x) or math.isinf(x) for x in (v, r)) or r <= 0 or v <= 0:
        return "n/a"
    if check.goal == "gain":
        return f"{r / v:.2f}x better"
    return f"{v / r:.2f}x"


def markdown(checks: Sequence[GoalCheck], candidate: str) -> str:
    """A summary line per goal, then the table of every check."""
    verdict = {True: "met", False: "**missed**", None: "n/a"}
    lines = [f"Goals for `{candidate}` (medians over the runs):", ""]
    for goal in ("tail", "gain", "peers", "balance"):
        mine = [c for c in checks if c.goal == goal]
        if mine:
            met = sum(c.met is True for c in mine)
            unjudged = sum(c.met is None for c in mine)
            extra = f" ({unjudged} not judged: a figure is missing)" if unjudged else ""
            lines.append(f"- {goal}: {met} of {len(mine) - unjudged} met{extra}")
    lines += [
        "",
        "| goal | workload | figure | value | against | reference | ratio | verdict |",
        "|---|---|---|--:|---|--:|--:|---|",
    ]
    for c in checks:
        label = TTFT_LABELS.get(c.figure, c.figure)
        lines.append(
            f"| {c.goal} | {c.workload} | {label} | {_fmt(c.figure, c.value)} | {c.against} | "
            f"{_fmt(c.figure, c.reference)} | {_ratio(c)} | {verdict[c.met]} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("matrix_json", type=Path, help="matrix.json written by `epp bench matrix`")
    parser.add_argument("--candidate", required=True, help="the variant to judge, e.g. PREFIX_TOKENS")
    args = parser.parse_args(argv)
    try:
        doc = orjson.loads(args.matrix_json.read_bytes())
        workloads = doc["workloads"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        print(f"matrix_goals: {args.matrix_json}: not a matrix report ({exc})", file=sys.stderr)
        return 2
    if not any(args.candidate in w.get("variants", {}) for w in workloads.values()):
        print(f"matrix_goals: {args.matrix_json}: no variant named {args.candidate!r}", file=sys.stderr)
        return 2
    print(markdown(check_goals(doc, args.candidate), args.candidate), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
