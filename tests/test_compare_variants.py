"""Which variants a comparison runs, the gateway flags each gets, and the plot's data."""

from pathlib import Path

import pytest

from bench.compare.frontends import gateway_args
from bench.compare.plot import plot_comparison, ttft_cdf, ttft_over_time
from bench.compare.variants import FrontKind, build_variants, parse_strategy_list
from epp.config.errors import ConfigError
from tests.test_compare_support import record


def test_strategy_list_is_checked_and_normalised() -> None:
    assert parse_strategy_list("round_robin, PREFIX_CACHE,DIRECT") == [
        "ROUND_ROBIN",
        "PREFIX_CACHE",
        "DIRECT",
    ]
    with pytest.raises(ValueError, match="must be one of"):
        parse_strategy_list("ROUND_ROBIN,FASTEST")
    with pytest.raises(ValueError, match="twice"):
        parse_strategy_list("RANDOM,random")
    with pytest.raises(ValueError, match="at least one"):
        parse_strategy_list(" , ")


def test_variants_cover_strategies_configs_and_both_peer_policies(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: queue-scorer\n- type: max-score-picker\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: queue-scorer\n"
        "  - pluginRef: max-score-picker\n"
    )
    variants = build_variants(["ROUND_ROBIN", "DIRECT"], [config], ["sglang-router"])
    assert [v.name for v in variants] == [
        "ROUND_ROBIN",
        "DIRECT",
        "config:mine",
        "sglang-router/cache_aware",
        "sglang-router/round_robin",
    ]
    assert [v.kind for v in variants] == [
        FrontKind.GATEWAY,
        FrontKind.DIRECT,
        FrontKind.GATEWAY,
        FrontKind.PEER,
        FrontKind.PEER,
    ]
    assert variants[3].slug == "sglang-router-cache_aware"


def test_an_invalid_config_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: EndpointPickerConfig\nplugins: 3\n")
    with pytest.raises(ConfigError):
        build_variants(["ROUND_ROBIN"], [bad], [])


def test_gateway_gets_the_pods_and_the_strategy_or_config(tmp_path: Path) -> None:
    [strategy] = build_variants(["LOAD_AWARE"], [], [])
    args = gateway_args(strategy, ["http://127.0.0.1:9001", "http://127.0.0.1:9002"], seed=7)
    assert args[args.index("--endpoints") + 1] == "127.0.0.1:9001,127.0.0.1:9002"
    assert args[args.index("--strategy") + 1] == "LOAD_AWARE"
    assert args[args.index("--seed") + 1] == "7"
    assert "--config" not in args


def test_ttft_cdf_and_over_time_use_successful_requests_only() -> None:
    records = [
        record(0.3, 0.0),
        record(0.1, 1.0),
        record(None, 2.0),
        record(9.0, 3.0, ok=False),
        record(0.2, 9.5),
    ]
    assert ttft_cdf(records) == ([0.1, 0.2, 0.3], [1 / 3, 2 / 3, 1.0])
    times, means = ttft_over_time(records, duration=10.0, windows=2)
    assert times == [2.5, 7.5]
    assert means == pytest.approx([0.2, 0.2])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    runs = [
        ("ROUND_ROBIN", [record(1.0, 0.0), record(2.0, 1.0)], 2.0),
        ("PREFIX_CACHE", [record(0.5, 0.5)], 2.0),
    ]
    path = plot_comparison(runs, tmp_path / "out" / "compare.png", "test")
    assert path.read_bytes().startswith(b"\x89PNG")
