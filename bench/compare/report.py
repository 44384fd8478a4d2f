"""The comparison's figures per variant, ratios against the baseline, and the table in three renderings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from bench.compare.picker_metrics import Prediction
from bench.compare.pod_metrics import PodCounters, hit_rate, request_shares
from bench.compare.runner import VariantResult
from bench.compare.variants import baseline_name
from bench.multi_round_qa import Summary

# Metrics where lower is better: a ratio of baseline / value > 1 means "this many times better".
LOWER_IS_BETTER = ("mean_ttft", "p50_ttft", "p90_ttft", "p99_ttft")
HIGHER_IS_BETTER = ("throughput", "output_tokens_per_s")
COLUMNS: tuple[tuple[str, str], ...] = (
    ("mean_ttft", "mean TTFT"),
    ("p50_ttft", "p50 TTFT"),
    ("p90_ttft", "p90 TTFT"),
    ("p99_ttft", "p99 TTFT"),
    ("throughput", "req/s"),
    ("output_tokens_per_s", "out tok/s"),
)


@dataclass(frozen=True)
class Row:
    """One variant's figures. Times are simulated seconds; hit rate is None when no pod was queried.

    `predicted_hit` is the picker's mean predicted prefix ratio per request (summed over its workers), None
    without a prefix scorer or a gateway; `predicted_requests` how many requests it is the mean of.
    """

    name: str
    kind: str
    finished: int
    failed: int
    mean_ttft: float
    p50_ttft: float
    p90_ttft: float
    p99_ttft: float
    throughput: float
    output_tokens_per_s: float
    hit_rate: float | None
    pod_requests: tuple[float, ...]
    pod_shares: tuple[float, ...]
    predicted_hit: float | None = None
    predicted_requests: float = 0.0


def make_row(
    name: str,
    kind: str,
    summary: Summary,
    pods: Sequence[PodCounters],
    prediction: Prediction | None = None,
) -> Row:
    """A row from a multi-round QA Summary, the pods' counter changes and the picker's predictions over
    the run."""
    return Row(
        name=name,
        kind=kind,
        finished=summary.finished,
        failed=summary.failed,
        mean_ttft=summary.avg_ttft,
        p50_ttft=summary.p50_ttft,
        p90_ttft=summary.p90_ttft,
        p99_ttft=summary.p99_ttft,
        throughput=summary.processing_speed,
        output_tokens_per_s=summary.output_tokens_per_s,
        hit_rate=hit_rate(pods),
        pod_requests=tuple(p.requests for p in pods),
        pod_shares=tuple(request_shares(pods)),
        predicted_hit=None if prediction is None else prediction.mean,
        predicted_requests=0.0 if prediction is None else prediction.count,
    )


def rows_of(results: Sequence[VariantResult]) -> list[Row]:
    return [
        make_row(r.variant.name, r.variant.kind.value, r.bench.summary, r.pods, r.prediction) for r in results
    ]


def ratio(value: float, base: float, lower_is_better: bool) -> float:
    """How many times better `value` is than `base` (>1 better, <1 worse); NaN when undefined."""
    if math.isnan(value) or math.isnan(base) or (value if lower_is_better else base) <= 0:
        return math.nan
    return base / value if lower_is_better else value / base


def ratios(rows: Sequence[Row], baseline: str) -> dict[str, dict[str, float]]:
    """For each row, each metric's factor of improvement over the baseline row."""
    base = next(r for r in rows if r.name == baseline)
    return {
        row.name: {
            metric: ratio(getattr(row, metric), getattr(base, metric), metric in LOWER_IS_BETTER)
            for metric, _ in COLUMNS
        }
        for row in rows
    }


def _seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def _cell(row: Row, metric: str, factor: float, is_baseline: bool) -> str:
    value = getattr(row, metric)
    text = _seconds(value) if metric in LOWER_IS_BETTER else f"{value:.2f}"
    if is_baseline or math.isnan(factor):
        return text
    return f"{text} (×{factor:.2f})"


def _shares(row: Row) -> str:
    return "/".join(f"{share * 100:.0f}" for share in row.pod_shares) or "n/a"


def _hit(row: Row) -> str:
    return "n/a" if row.hit_rate is None else f"{row.hit_rate * 100:.1f}%"


def _predicted(row: Row) -> str:
    return "n/a" if row.predicted_hit is None else f"{row.predicted_hit * 100:.1f}%"


def table_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and body cells: each metric with its ×factor vs the baseline (×2 = twice as good)."""
    baseline = baseline_name([r.name for r in rows])
    factors = ratios(rows, baseline)
    header = [
        "variant",
        "ok",
        "failed",
        *(label for _, label in COLUMNS),
        "prefix hit",
        "predicted hit",
        "pod share %",
    ]
    body = [
        [
            row.name,
            str(row.finished),
            str(row.failed),
            *(_cell(row, m, factors[row.name][m], row.name == baseline) for m, _ in COLUMNS),
            _hit(row),
            _predicted(row),
            _shares(row),
        ]
        for row in rows
    ]
    return header, body


def ratio_caption(rows: Sequence[Row]) -> str:
    baseline = baseline_name([r.name for r in rows])
    return (
        f"(×N) = N times better than {baseline}: its TTFT divided by this one's, or this throughput divided "
        f"by its. TTFT in simulated seconds; prefix hit = cached / queried prompt tokens over all pods; "
        f"predicted hit = the picker's mean predicted prefix ratio per request (all workers); "
        f"pod share = finished requests per pod."
    )


def rich_table(rows: Sequence[Row], title: str) -> Table:
    header, body = table_cells(rows)
    table = Table(title=title, caption=ratio_caption(rows))
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    return table


def markdown_table(rows: Sequence[Row]) -> str:
    header, body = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n\n" + ratio_caption(rows) + "\n"


def finite(value: Any) -> Any:
    """NaN and infinities -> None, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def report_document(rows: Sequence[Row], context: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: `context` (workload, fleet, command, notes...), baseline, rows with their ratios."""
    baseline = baseline_name([r.name for r in rows])
    factors = ratios(rows, baseline)
    variants = [{**asdict(row), "vs_baseline": factors[row.name]} for row in rows]
    document: dict[str, Any] = finite({**context, "baseline": baseline, "variants": variants})
    return document


def write_reports(
    rows: Sequence[Row], context: dict[str, Any], markdown_intro: str, output_dir: Path
) -> tuple[Path, Path]:
    """Write compare.json and compare.md into `output_dir`; returns their paths."""
    json_path, md_path = output_dir / "compare.json", output_dir / "compare.md"
    json_path.write_bytes(orjson.dumps(report_document(rows, context), option=orjson.OPT_INDENT_2))
    md_path.write_text(markdown_intro + "\n" + markdown_table(rows), encoding="utf-8")
    return json_path, md_path
