"""The comparison's report: counters from scrapes, ratios against the baseline, table, JSON and plot data."""

import math

import orjson
import pytest

from bench.compare.pod_metrics import PodCounters, deltas, hit_rate, parse_counters, request_shares
from bench.compare.report import make_row, markdown_table, ratio, ratios, report_document, table_cells
from bench.compare.variants import baseline_name
from bench.multi_round_qa.summary import summarize
from tests.test_compare_support import record

SCRAPE = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="m"}} {queries}
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {hits}
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="m"}} {stop}
vllm:request_success_total{{engine="0",finished_reason="length",model_name="m"}} {length}
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} 3.0
"""


def scrape(queries: float, hits: float, stop: float, length: float) -> str:
    return SCRAPE.format(queries=queries, hits=hits, stop=stop, length=length)


def test_counters_sum_label_sets_and_ignore_other_metrics() -> None:
    counters = parse_counters("http://a", scrape(1000, 250, 3, 4))
    assert counters == PodCounters("http://a", prefix_hits=250, prefix_queries=1000, requests=7)


def test_missing_counters_count_as_zero() -> None:
    assert parse_counters("http://a", "") == PodCounters("http://a", 0, 0, 0)


def test_hit_rate_is_the_delta_over_the_run_summed_over_pods() -> None:
    # Before the run both pods already had traffic; only what happened during the run counts.
    before = [
        parse_counters("http://a", scrape(5000, 5000, 10, 0)),
        parse_counters("http://b", scrape(0, 0, 0, 0)),
    ]
    after = [
        parse_counters("http://a", scrape(6000, 5900, 12, 1)),
        parse_counters("http://b", scrape(3000, 600, 5, 2)),
    ]
    change = deltas(before, after)
    assert change == [PodCounters("http://a", 900, 1000, 3), PodCounters("http://b", 600, 3000, 7)]
    assert hit_rate(change) == pytest.approx(1500 / 4000)
    assert request_shares(change) == pytest.approx([0.3, 0.7])


def test_no_queries_has_no_hit_rate_and_no_requests_no_shares() -> None:
    idle = [PodCounters("http://a", 0, 0, 0), PodCounters("http://b", 0, 0, 0)]
    assert hit_rate(idle) is None
    assert request_shares(idle) == [0.0, 0.0]


def test_deltas_refuse_scrapes_of_different_pods() -> None:
    with pytest.raises(ValueError, match="not of the same pods"):
        deltas([PodCounters("http://a", 0, 0, 0)], [PodCounters("http://b", 0, 0, 0)])


def test_ratio_says_how_many_times_better() -> None:
    assert ratio(0.5, 2.0, lower_is_better=True) == 4.0  # TTFT 4x shorter
    assert ratio(4.0, 2.0, lower_is_better=True) == 0.5  # twice as slow
    assert ratio(6.0, 3.0, lower_is_better=False) == 2.0  # twice the throughput
    assert math.isnan(ratio(0.0, 1.0, lower_is_better=True))
    assert math.isnan(ratio(math.nan, 1.0, lower_is_better=True))


def rows_for(ttfts: dict[str, list[float]]):
    rows = []
    for name, values in ttfts.items():
        records = [record(ttft=t, launch=i) for i, t in enumerate(values)]
        summary = summarize(records, 0.0, 100.0, 0, 1.0)
        pods = [PodCounters("http://a", 10, 100, 1), PodCounters("http://b", 30, 100, 3)]
        rows.append(make_row(name, "epp gateway", summary, pods))
    return rows


def test_ratios_are_against_round_robin_wherever_it_runs() -> None:
    rows = rows_for({"PREFIX_CACHE": [0.5, 0.5], "ROUND_ROBIN": [1.0, 2.0], "RANDOM": [3.0, 3.0]})
    assert baseline_name([r.name for r in rows]) == "ROUND_ROBIN"
    factors = ratios(rows, "ROUND_ROBIN")
    assert factors["ROUND_ROBIN"]["mean_ttft"] == 1.0
    assert factors["PREFIX_CACHE"]["mean_ttft"] == pytest.approx(3.0)
    assert factors["RANDOM"]["mean_ttft"] == pytest.approx(0.5)
    assert factors["PREFIX_CACHE"]["throughput"] == pytest.approx(1.0)


def test_first_variant_is_the_baseline_without_round_robin() -> None:
    assert baseline_name(["PREFIX_CACHE", "LOAD_AWARE"]) == "PREFIX_CACHE"


def test_table_cells_show_values_factors_hit_rate_and_shares() -> None:
    rows = rows_for({"ROUND_ROBIN": [1.0, 2.0], "PREFIX_CACHE": [0.5, 0.5]})
    header, body = table_cells(rows)
    cells = {row[0]: dict(zip(header, row, strict=True)) for row in body}
    assert cells["ROUND_ROBIN"]["mean TTFT"] == "1.500 s"  # the baseline has no factor
    assert cells["PREFIX_CACHE"]["mean TTFT"] == "0.500 s (×3.00)"
    assert cells["PREFIX_CACHE"]["prefix hit"] == "20.0%"
    assert cells["PREFIX_CACHE"]["pod share %"] == "25/75"
    assert cells["PREFIX_CACHE"]["ok"] == "2"


def test_markdown_table_has_a_row_per_variant() -> None:
    text = markdown_table(rows_for({"ROUND_ROBIN": [1.0], "LOAD_AWARE": [0.25]}))
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 4  # header, rule, two rows
    assert "| LOAD_AWARE |" in lines[3] and "(×4.00)" in lines[3]


def test_report_document_is_standard_json_with_ratios() -> None:
    rows = rows_for({"ROUND_ROBIN": [1.0], "PREFIX_CACHE": []})  # no successful request: NaN TTFTs
    doc = report_document(rows, {"command": "epp bench compare"})
    parsed = orjson.loads(orjson.dumps(doc))
    assert parsed["baseline"] == "ROUND_ROBIN" and parsed["command"] == "epp bench compare"
    empty = parsed["variants"][1]
    assert empty["name"] == "PREFIX_CACHE" and empty["mean_ttft"] is None
    assert empty["vs_baseline"]["mean_ttft"] is None
    assert parsed["variants"][0]["pod_shares"] == [0.25, 0.75]
