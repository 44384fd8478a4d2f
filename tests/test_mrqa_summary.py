"""Performance summary and CSV output of the multi-round QA client."""

import csv
import math
from pathlib import Path

import pytest

from bench.multi_round_qa.client import RequestRecord
from bench.multi_round_qa.summary import CSV_COLUMNS, format_summary, percentile, summarize, write_csv


def records() -> list[RequestRecord]:
    ok1 = RequestRecord(
        1,
        1,
        "u",
        0.0,
        finish_time=2.0,
        ttft=0.5,
        itl=0.1,
        generation_time=1.5,
        prompt_tokens=100,
        generation_tokens=30,
    )
    ok2 = RequestRecord(
        2,
        1,
        "u",
        1.0,
        finish_time=4.0,
        ttft=1.5,
        itl=0.3,
        generation_time=1.5,
        prompt_tokens=300,
        generation_tokens=15,
    )
    failed = RequestRecord(1, 2, "u", 5.0, finish_time=5.5, status="http_503", error="down")
    cancelled = RequestRecord(3, 1, "u", 9.0, status="cancelled")
    return [ok1, ok2, failed, cancelled]


def test_percentile_interpolates() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    assert math.isnan(percentile([], 50))


def test_summary_numbers_match_records() -> None:
    s = summarize(records(), start=0.0, end=10.0, on_the_fly=1, qps=0.5)
    assert s.finished == 2 and s.failed == 1 and s.on_the_fly == 1
    assert s.launch_rate == pytest.approx(0.4)
    assert s.processing_speed == pytest.approx(0.2)
    assert s.input_tokens_per_s == pytest.approx(40.0)
    assert s.output_tokens_per_s == pytest.approx(4.5)
    assert s.generation_throughput_per_request == pytest.approx((20.0 + 10.0) / 2)
    assert s.avg_ttft == pytest.approx(1.0)
    assert s.p50_ttft == pytest.approx(1.0)
    assert s.p99_ttft == pytest.approx(1.49)
    assert s.avg_itl == pytest.approx(0.2)


def test_summary_window_keeps_requests_finished_inside_it() -> None:
    s = summarize(records(), start=3.0, end=10.0, on_the_fly=0, qps=0.5)
    assert s.finished == 1 and s.avg_ttft == pytest.approx(1.5)


def test_format_has_production_stack_lines() -> None:
    s = summarize(records(), start=0.0, end=10.0, on_the_fly=1, qps=0.5)
    text = format_summary(s)
    expected = [
        "==================== Performance summary ======================",
        "  QPS: 0.5000 reqs/s",
        "  Processing speed: 0.2000 reqs/s",
        "  Requests on-the-fly: 1",
        "  Input tokens per second: 40.0000 tokens/s",
        "  Output tokens per second: 4.5000 tokens/s",
        "  Average generation throughput (per request): 15.0000 tokens/req/s",
        "  Average TTFT: 1.0000s",
        "  TTFT p50/p90/p99: 1.0000s / 1.4000s / 1.4900s",
        "  Failed requests: 1",
        "Time range: 0.00 - 10.00 (10.00s)",
    ]
    lines = text.splitlines()
    for line in expected:
        assert line in lines


def test_format_of_an_empty_run_does_not_fail() -> None:
    text = format_summary(summarize([], start=0.0, end=1.0, on_the_fly=0, qps=1.0))
    lines = text.splitlines()
    assert "  Average TTFT: n/a" in lines and "  TTFT p50/p90/p99: n/a / n/a / n/a" in lines


def test_csv_has_header_and_one_row_per_request(tmp_path: Path) -> None:
    path = tmp_path / "out" / "run.csv"
    write_csv(records(), path)
    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0][:9] == [
        "user_id",
        "round",
        "launch_time",
        "ttft",
        "itl",
        "finish_time",
        "prompt_tokens",
        "generation_tokens",
        "status",
    ]
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert len(body) == 4
    assert [r["status"] for r in body] == ["ok", "ok", "http_503", "cancelled"]
    assert float(body[1]["ttft"]) == pytest.approx(1.5)
    assert body[3]["ttft"] == "" and body[2]["error"] == "down"
