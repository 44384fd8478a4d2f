"""The performance summary of a run (production-stack's block plus TTFT percentiles) and the CSV output."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.multi_round_qa.client import STATUS_CANCELLED, RequestRecord

CSV_COLUMNS = (
    "user_id",
    "round",
    "launch_time",
    "ttft",
    "itl",
    "finish_time",
    "prompt_tokens",
    "generation_tokens",
    "status",
    "generation_time",
    "base_url",
    "error",
)


@dataclass(frozen=True)
class Summary:
    """Aggregates over the window [start, end] (simulated seconds since the run's start)."""

    qps: float
    launch_rate: float
    processing_speed: float
    on_the_fly: int
    finished: int
    failed: int
    input_tokens_per_s: float
    output_tokens_per_s: float
    generation_throughput_per_request: float
    avg_ttft: float
    p50_ttft: float
    p90_ttft: float
    p99_ttft: float
    avg_itl: float
    start: float
    end: float


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(
    records: Sequence[RequestRecord], start: float, end: float, on_the_fly: int, qps: float
) -> Summary:
    """Production-stack's rules: rates count requests launched (any outcome) or finished in the window.

    `records` may include requests still in flight (no finish time); `on_the_fly` is reported as given.
    """
    span = max(end - start, 1e-9)
    launched = [r for r in records if start <= r.launch_time <= end]
    done = [r for r in records if r.finish_time is not None and start <= r.finish_time <= end]
    finished = [r for r in done if r.ok]
    failed = [r for r in done if not r.ok and r.status != STATUS_CANCELLED]
    ttfts = [r.ttft for r in finished if r.ttft is not None]
    per_request = [r.generation_tokens / r.generation_time for r in finished if r.generation_time]
    return Summary(
        qps=qps,
        launch_rate=len(launched) / span,
        processing_speed=len(finished) / span,
        on_the_fly=on_the_fly,
        finished=len(finished),
        failed=len(failed),
        input_tokens_per_s=sum(r.prompt_tokens for r in finished) / span,
        output_tokens_per_s=sum(r.generation_tokens for r in finished) / span,
        generation_throughput_per_request=_mean(per_request),
        avg_ttft=_mean(ttfts),
        p50_ttft=percentile(ttfts, 50),
        p90_ttft=percentile(ttfts, 90),
        p99_ttft=percentile(ttfts, 99),
        avg_itl=_mean([r.itl for r in finished if r.itl is not None]),
        start=start,
        end=end,
    )


def _num(value: float, unit: str) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}{unit}"


def format_summary(s: Summary) -> str:
    """The block production-stack prints (without colours), plus TTFT percentiles, ITL and failures."""
    lines = [
        "==================== Performance summary ======================",
        f"  QPS: {s.qps:.4f} reqs/s",
        f"  Launch rate: {s.launch_rate:.4f} reqs/s",
        f"  Processing speed: {s.processing_speed:.4f} reqs/s",
        f"  Requests on-the-fly: {s.on_the_fly}",
        f"  Finished requests: {s.finished}",
        f"  Failed requests: {s.failed}",
        f"  Input tokens per second: {s.input_tokens_per_s:.4f} tokens/s",
        f"  Output tokens per second: {s.output_tokens_per_s:.4f} tokens/s",
        "  Average generation throughput (per request): "
        + _num(s.generation_throughput_per_request, " tokens/req/s"),
        f"  Average TTFT: {_num(s.avg_ttft, 's')}",
        f"  TTFT p50/p90/p99: {_num(s.p50_ttft, 's')} / {_num(s.p90_ttft, 's')} / {_num(s.p99_ttft, 's')}",
        f"  Average ITL: {_num(s.avg_itl, 's')}",
        f"Time range: {s.start:.2f} - {s.end:.2f} ({s.end - s.start:.2f}s)",
        "===============================================================",
    ]
    return "\n".join(lines)


def _cell(value: float | int | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def write_csv(records: Sequence[RequestRecord], path: Path) -> None:
    """One row per request, ordered by launch time; empty cells for what a request never measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in sorted(records, key=lambda rec: rec.launch_time):
            writer.writerow(
                [
                    _cell(v)
                    for v in (
                        r.user_id,
                        r.round,
                        r.launch_time,
                        r.ttft,
                        r.itl,
                        r.finish_time,
                        r.prompt_tokens,
                        r.generation_tokens,
                        r.status,
                        r.generation_time,
                        r.base_url,
                        r.error,
                    )
                ]
            )
