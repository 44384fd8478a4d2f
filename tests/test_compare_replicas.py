"""Replica variants of the comparison (`PREFIX_CACHE@2`, `PRECISE@2`): parsing, the gateway and fleet flags,
the picker's predicted hit ratio next to the pods' actual one, and one short PRECISE@2 run."""

import dataclasses
from pathlib import Path

import pytest

from bench.compare.frontends import (
    KV_EVENTS_CONFIG,
    fleet_kv_args,
    gateway_args,
    prediction_change,
    worker_metrics_urls,
)
from bench.compare.matrix import MatrixSpec, run_one, sim_args
from bench.compare.matrix_cli import build_matrix_spec
from bench.compare.matrix_report import markdown_table
from bench.compare.matrix_stats import cell_of, hit_gap
from bench.compare.picker_metrics import Prediction, parse_prediction, total_change
from bench.compare.report import make_row
from bench.compare.variants import (
    PRECISE,
    PRECISE_CONFIGS,
    FrontKind,
    build_variants,
    needs_kv_events,
    parse_strategy_list,
    split_workers,
)
from bench.multi_round_qa import Summary
from bench.sim.kv_events import KVEventsConfig
from bench.workloads.catalog import get_workload
from epp.cli import build_parser
from tests.test_matrix_report import row

PODS = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]


def test_worker_suffix_is_parsed_and_checked() -> None:
    assert split_workers("PREFIX_CACHE@2") == ("PREFIX_CACHE", 2)
    assert split_workers("ROUND_ROBIN") == ("ROUND_ROBIN", 1)
    assert parse_strategy_list("round_robin,prefix_cache@2,precise@2,PRECISE") == [
        "ROUND_ROBIN",
        "PREFIX_CACHE@2",
        "PRECISE@2",
        "PRECISE",
    ]
    for bad, message in [
        ("PREFIX_CACHE@0", "from 1 to 16"),
        ("PREFIX_CACHE@x", "from 1 to 16"),
        ("PREFIX_CACHE@17", "from 1 to 16"),
        ("DIRECT@2", "no router"),
        ("FASTEST@2", "must be one of"),
        ("PRECISE@2,precise@2", "twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_strategy_list(bad)


def test_replica_variants_carry_workers_and_precise_needs_kv_events(tmp_path: Path) -> None:
    names = ["ROUND_ROBIN", "PREFIX_CACHE@2", "PRECISE@2", PRECISE]
    rr, pc2, precise2, precise = build_variants(names, [], [])
    assert (rr.workers, rr.kv_events, rr.strategy) == (1, False, "ROUND_ROBIN")
    assert (pc2.name, pc2.workers, pc2.strategy) == ("PREFIX_CACHE@2", 2, "PREFIX_CACHE")
    assert not pc2.kv_events
    assert (precise2.workers, precise2.config, precise2.strategy) == (2, PRECISE_CONFIGS["PRECISE"], None)
    assert precise2.kv_events and precise.kv_events and precise.workers == 1
    assert precise2.kind is FrontKind.GATEWAY and precise2.slug == "precise-2"
    # The bundled config is valid and follows KV events; a config without a precise scorer does not.
    assert needs_kv_events(PRECISE_CONFIGS["PRECISE"])
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: queue-scorer\n- type: max-score-picker\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: queue-scorer\n"
        "  - pluginRef: max-score-picker\n"
    )
    [from_file] = build_variants([], [plain, PRECISE_CONFIGS["PRECISE"]], [])[:1]
    assert not from_file.kv_events
    assert build_variants([], [PRECISE_CONFIGS["PRECISE"]], [])[0].kv_events


def test_gateway_and_fleet_flags_of_replica_variants() -> None:
    rr, pc2, precise2 = build_variants(["ROUND_ROBIN", "PREFIX_CACHE@2", "PRECISE@2"], [], [])
    args = gateway_args(pc2, PODS, seed=3)
    assert args[args.index("--workers") + 1] == "2"
    assert args[args.index("--worker-metrics-port") + 1] == "0"
    assert args[args.index("--strategy") + 1] == "PREFIX_CACHE"
    assert "--workers" not in gateway_args(rr, PODS, seed=3)
    args = gateway_args(precise2, PODS, seed=3)
    assert args[args.index("--config") + 1] == str(PRECISE_CONFIGS["PRECISE"]) and "--strategy" not in args
    # Only a variant that follows KV events gets a publishing fleet; the JSON is what the simulator reads.
    assert fleet_kv_args(rr) == [] and fleet_kv_args(pc2) == []
    assert fleet_kv_args(precise2) == ["--kv-events-config", KV_EVENTS_CONFIG]
    parsed = KVEventsConfig.from_json(KV_EVENTS_CONFIG)
    assert parsed is not None and parsed.endpoint == "tcp://127.0.0.1:*" and parsed.topic == "kv"
    spec = MatrixSpec([get_workload("cache-pressure")], [rr, precise2], [0], Path("/tmp/unused"))
    assert "--kv-events-config" in sim_args(spec, get_workload("cache-pressure"), 0, precise2)
    assert "--kv-events-config" not in sim_args(spec, get_workload("cache-pressure"), 0, rr)


def test_worker_metrics_urls_come_from_the_supervisor_lines() -> None:
    stderr = (
        "epp gateway: worker 1 pid 11 ready: metrics http://127.0.0.1:9201\n"
        "epp gateway: worker 0 pid 10 ready: metrics http://127.0.0.1:9200/\n"
        "epp gateway: worker 1 (pid 11) exited (code -9); restarting it\n"
        "epp gateway: worker 1 pid 12 ready: metrics http://127.0.0.1:9301\n"
    )
    assert worker_metrics_urls(stderr, 2) == [
        "http://127.0.0.1:9200/metrics",
        "http://127.0.0.1:9301/metrics",
    ]
    with pytest.raises(RuntimeError, match=r"worker\(s\) \[2\]"):
        worker_metrics_urls(stderr, 3)


EXPOSITION = """# HELP llm_d_epp_prefix_indexer_hit_ratio Fraction (predicted).
# TYPE llm_d_epp_prefix_indexer_hit_ratio histogram
llm_d_epp_prefix_indexer_hit_ratio_bucket{{plugin_name="p",plugin_type="t",le="+Inf"}} {count}
llm_d_epp_prefix_indexer_hit_ratio_count{{plugin_name="p",plugin_type="t"}} {count}
llm_d_epp_prefix_indexer_hit_ratio_sum{{plugin_name="p",plugin_type="t"}} {total}
# TYPE other_sum gauge
other_sum 99
"""


def test_predicted_ratio_is_the_histogram_mean_over_all_workers_and_the_run() -> None:
    assert parse_prediction(EXPOSITION.format(count=4, total=3.0)) == Prediction(3.0, 4.0)
    assert parse_prediction("# nothing here\n") == Prediction(0.0, 0.0)
    before = [Prediction(1.0, 2.0), Prediction(0.0, 0.0)]
    after = [Prediction(4.0, 6.0), Prediction(2.0, 4.0)]
    change = total_change(before, after)
    assert change == Prediction(5.0, 8.0) and change.mean == pytest.approx(0.625)
    assert Prediction().mean is None
    assert prediction_change(None, after) is None
    with pytest.raises(ValueError, match="same workers"):
        total_change(before, after[:1])


def test_rows_and_tables_show_predicted_next_to_actual() -> None:
    summary = Summary(
        qps=2.0, launch_rate=2.0, processing_speed=2.0, on_the_fly=0, finished=8, failed=0,
        input_tokens_per_s=1000.0, output_tokens_per_s=100.0, generation_throughput_per_request=20.0,
        avg_ttft=0.5, p50_ttft=0.4, p90_ttft=0.9, p99_ttft=1.0, avg_itl=0.05, start=0.0, end=4.0,
    )  # fmt: skip
    plain = make_row("ROUND_ROBIN", "epp gateway", summary, [])
    assert plain.predicted_hit is None and plain.predicted_requests == 0.0
    predicted = make_row("PRECISE@2", "epp gateway", summary, [], Prediction(6.0, 8.0))
    assert predicted.predicted_hit == 0.75 and predicted.predicted_requests == 8.0
    assert hit_gap(dataclasses.replace(row("x", 1.0, hit=0.7), predicted_hit=0.75)) == pytest.approx(0.05)
    assert hit_gap(row("x", 1.0, hit=0.7)) is None
    rr = cell_of("w", "ROUND_ROBIN", "epp gateway", [(0, row("ROUND_ROBIN", 2.0))])
    precise = cell_of(
        "w",
        "PRECISE@2",
        "epp gateway",
        [(s, dataclasses.replace(row("PRECISE@2", 1.0, hit=h), predicted_hit=p)) for s, h, p in
         [(0, 0.6, 0.62), (1, 0.7, 0.65), (2, 0.5, 0.56)]],
    )  # fmt: skip
    table = markdown_table([rr, precise])
    assert "| predicted hit | predicted - actual |" in table
    assert "62.0% [56.0%–65.0%]" in table and "+2.0 pt [-5.0 pt–+6.0 pt]" in table


def test_duration_flag_replaces_the_scale() -> None:
    args = build_parser().parse_args(
        ["bench", "matrix", "--workloads", "cache-pressure", "--strategies", "PRECISE@2", "--duration", "180"]
    )
    spec = build_matrix_spec(args, args.workloads, [])
    assert spec.duration == 180.0 and spec.variants[0].workers == 2
    args = build_parser().parse_args(["bench", "matrix", "--duration", "-1"])
    with pytest.raises(ValueError, match="--duration"):
        build_matrix_spec(args, args.workloads, [])


@pytest.mark.slow
def test_a_precise_run_with_two_workers_over_a_kv_event_fleet_reports_its_prediction(tmp_path: Path) -> None:
    [variant] = build_variants(["PRECISE@2"], [], [])
    workload = get_workload("shared-system-prompt")
    spec = MatrixSpec([workload], [variant], [0], tmp_path, pods=2, time_scale=4.0, duration_s=16.0)
    (tmp_path / workload.name).mkdir()
    result = run_one(spec, workload, variant, 1, 0)
    r = result.row
    assert r.failed == 0 and r.finished > 10
    # Every scheduled request was scored by the prefix scorer of one of the two workers.
    assert r.predicted_requests >= r.finished
    # The 2,500-token system prompt is shared: after the first requests both the picker and the pods see hits.
    assert r.predicted_hit is not None and r.predicted_hit > 0.2
    assert r.hit_rate is not None and r.hit_rate > 0.2
