"""Spread over a matrix cell's runs: median, min and max of each figure, and the pods' max/min share."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.compare.report import Row

# (figure, label, lower is better): the figures the matrix reports per cell.
FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("mean_ttft", "mean TTFT", True),
    ("p90_ttft", "p90 TTFT", True),
    ("p99_ttft", "p99 TTFT", True),
    ("throughput", "req/s", False),
    ("hit_rate", "prefix hit", False),
    ("predicted_hit", "predicted hit", False),
    ("hit_gap", "predicted - actual", False),
    ("share_ratio", "max/min share", True),
)


@dataclass(frozen=True)
class Spread:
    """Median, min and max of one figure over a cell's runs (NaN when no run had a value)."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        known = [v for v in values if v is not None and not math.isnan(v)]
        if not known:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(known), min(known), max(known), len(known))


def share_ratio(row: Row) -> float | None:
    """The busiest pod's finished requests over the idlest's: 1 is even, inf when a pod got none."""
    if not row.pod_requests or sum(row.pod_requests) <= 0:
        return None
    low = min(row.pod_requests)
    return math.inf if low <= 0 else max(row.pod_requests) / low


def hit_gap(row: Row) -> float | None:
    """The picker's mean predicted prefix ratio minus the pods' actual hit rate (None without either)."""
    if row.predicted_hit is None or row.hit_rate is None:
        return None
    return row.predicted_hit - row.hit_rate


def figure(row: Row, name: str) -> float | None:
    """A row's value of one of FIGURES."""
    if name == "share_ratio":
        return share_ratio(row)
    if name == "hit_gap":
        return hit_gap(row)
    value: float | None = getattr(row, name)
    return value


@dataclass(frozen=True)
class Cell:
    """One variant on one workload over its runs."""

    workload: str
    variant: str
    kind: str
    seeds: tuple[int, ...]
    finished: Spread
    failed: Spread
    figures: dict[str, Spread]


def cell_of(workload: str, variant: str, kind: str, runs: Sequence[tuple[int, Row]]) -> Cell:
    """The spread of every figure over `runs` ((seed, row) pairs)."""
    rows = [row for _, row in runs]
    return Cell(
        workload,
        variant,
        kind,
        tuple(seed for seed, _ in runs),
        Spread.of([float(r.finished) for r in rows]),
        Spread.of([float(r.failed) for r in rows]),
        {name: Spread.of([figure(r, name) for r in rows]) for name, _, _ in FIGURES},
    )


def median_ratio(cell: Cell, base: Cell, name: str, lower_is_better: bool) -> float:
    """How many times better the cell's median is than the baseline's (>1 better); NaN when undefined."""
    value, ref = cell.figures[name].median, base.figures[name].median
    if any(math.isnan(x) or math.isinf(x) for x in (value, ref)):
        return math.nan
    if lower_is_better:
        return ref / value if value > 0 else math.nan
    return value / ref if ref > 0 else math.nan
