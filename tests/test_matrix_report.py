"""The matrix's flags, cold-cache handling, spread statistics and report documents (no fleet started)."""

import math
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from bench.compare.cold_caches import reset_prefix_caches, run_salt
from bench.compare.matrix import (
    SALTED,
    MatrixSpec,
    RunResult,
    cold_fleet,
    sim_args,
)
from bench.compare.matrix_cli import build_matrix_spec, parse_seeds
from bench.compare.matrix_report import json_document, markdown_document, markdown_table, spread_text
from bench.compare.matrix_stats import Spread, cell_of, median_ratio, share_ratio
from bench.compare.provenance import config_hash
from bench.compare.report import Row
from bench.compare.variants import FrontKind, Variant
from bench.peers import free_port
from bench.sim.profiles import get_profile
from bench.workloads.catalog import BuildContext, get_workload
from epp.cli import build_parser

RR = Variant("ROUND_ROBIN", FrontKind.GATEWAY, strategy="ROUND_ROBIN")
PC = Variant("PREFIX_CACHE", FrontKind.GATEWAY, strategy="PREFIX_CACHE")


def row(name: str, mean: float, hit: float | None = 0.5, pods: tuple[float, ...] = (10, 10)) -> Row:
    total = sum(pods) or 1
    return Row(
        name, "epp gateway", int(sum(pods)), 0, mean, mean, 2 * mean, 3 * mean, 1.0, 50.0, hit, pods,
        tuple(p / total for p in pods),
    )  # fmt: skip


def result(variant: Variant, seed: int, mean: float, **kw: object) -> RunResult:
    r = row(variant.name, mean, **kw)  # type: ignore[arg-type]
    return RunResult("no-sharing", variant, seed + 1, seed, r, {"rate": 5.0}, "fresh simulated fleet", 1.0)


def parse(*argv: str) -> object:
    return build_parser().parse_args(["bench", *argv])


def test_spread_ignores_missing_values_and_share_ratio_flags_a_starved_pod() -> None:
    assert Spread.of([3.0, None, 1.0, math.nan, 2.0]) == Spread(2.0, 1.0, 3.0, 3)
    assert math.isnan(Spread.of([None]).median) and Spread.of([None]).runs == 0
    assert share_ratio(row("x", 1.0, pods=(30, 10, 20))) == 3.0
    assert share_ratio(row("x", 1.0, pods=(30, 0))) == math.inf
    assert share_ratio(row("x", 1.0, pods=(0, 0))) is None


def test_cells_report_median_min_max_and_the_factor_against_round_robin() -> None:
    rr = cell_of(
        "w", "ROUND_ROBIN", "epp gateway", [(s, row("ROUND_ROBIN", m)) for s, m in enumerate((1.0, 1.2, 0.8))]
    )
    pc = cell_of(
        "w",
        "PREFIX_CACHE",
        "epp gateway",
        [(s, row("PREFIX_CACHE", m)) for s, m in enumerate((0.4, 0.5, 0.6))],
    )
    assert rr.figures["mean_ttft"] == Spread(1.0, 0.8, 1.2, 3)
    assert median_ratio(pc, rr, "mean_ttft", lower_is_better=True) == pytest.approx(2.0)
    assert spread_text("mean_ttft", pc.figures["mean_ttft"]) == "0.500 [0.400–0.600]"
    table = markdown_table([rr, pc])
    assert "| ROUND_ROBIN | 3 | 20 | 0 | 1.000 [0.800–1.200] |" in table
    assert "0.500 [0.400–0.600] ×2.00" in table and "50.0%" in table


def test_json_document_has_every_run_and_no_infinities() -> None:
    results = [result(RR, 0, 1.0), result(PC, 0, 0.5, pods=(20, 0)), result(RR, 1, 1.2), result(PC, 1, 0.7)]
    doc = json_document({"commit": "abc"}, results)
    orjson.dumps(doc)  # standard JSON: inf became null
    variants = doc["workloads"]["no-sharing"]["variants"]
    assert [r["seed"] for r in variants["PREFIX_CACHE"]["runs"]] == [0, 1]
    assert variants["PREFIX_CACHE"]["runs"][0]["share_ratio"] is None
    assert variants["ROUND_ROBIN"]["figures"]["mean_ttft"]["median"] == pytest.approx(1.1)
    assert doc["workloads"]["no-sharing"]["params"] == {"rate": 5.0}
    markdown = markdown_document("# intro\n", results)
    assert (
        markdown.startswith("# intro")
        and "## 5. no-sharing: random prompts" in markdown
        and "rate=5.0" in markdown
    )


def test_seeds_come_from_seeds_or_runs_and_bad_ones_are_refused() -> None:
    assert parse_seeds(parse("matrix", "--runs", "3", "--seed", "7")) == [7, 8, 9]  # type: ignore[arg-type]
    assert parse_seeds(parse("matrix", "--seeds", "4,2")) == [4, 2]  # type: ignore[arg-type]
    for bad in (["--seeds", "1,1"], ["--seeds", "x"], ["--runs", "0"]):
        with pytest.raises(ValueError, match=r"--seeds|--runs"):
            parse_seeds(parse("matrix", *bad))  # type: ignore[arg-type]


def test_matrix_flags_build_the_spec_with_time_scale_1_on_real_endpoints() -> None:
    notes: list[str] = []
    spec = build_matrix_spec(parse("matrix", "--workloads", "2,5"), "2,5", notes)  # type: ignore[arg-type]
    assert [w.name for w in spec.workloads] == ["shared-system-prompt", "no-sharing"]
    assert [v.name for v in spec.variants] == ["ROUND_ROBIN", "PREFIX_CACHE", "LOAD_AWARE", "PREFIX_TOKENS"]
    assert spec.seeds == [0, 1, 2] and spec.time_scale == 2.0 and spec.endpoints is None
    args = parse(
        "matrix", "--endpoints", "127.0.0.1:9,127.0.0.1:10", "--model", "m", "--workloads", "lora-mix"
    )
    real = build_matrix_spec(args, "lora-mix", notes)  # type: ignore[arg-type]
    assert real.time_scale == 1.0 and real.endpoints == ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    assert any("adapter-0" in n for n in notes)
    with pytest.raises(ValueError, match="--model is required"):
        build_matrix_spec(parse("matrix", "--endpoints", "127.0.0.1:9"), "all", [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown workload"):
        build_matrix_spec(parse("matrix"), "nope", [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--goals-for 'PRECISE' is not one of the variants"):
        build_matrix_spec(parse("matrix", "--goals-for", "PRECISE"), "all", [])  # type: ignore[arg-type]


def test_compare_workload_takes_the_matrix_path_with_compare_flags() -> None:
    args = parse(
        "compare", "--workload", "bursty", "--strategies", "ROUND_ROBIN", "--runs", "2", "--scale", "ci"
    )
    spec = build_matrix_spec(args, "bursty", [])  # type: ignore[arg-type]
    assert [w.name for w in spec.workloads] == ["bursty"] and spec.seeds == [0, 1] and spec.scale == "ci"


def test_lora_workload_fleets_serve_the_adapters_two_per_batch() -> None:
    spec = MatrixSpec([], [RR], [0], Path("/tmp/x"))
    args = sim_args(spec, get_workload("lora-mix"), seed=3)
    assert args[args.index("--lora-modules") + 1 : args.index("--max-loras")] == list(
        get_workload("7").lora_modules
    )
    assert args[args.index("--max-loras") + 1] == "2" and args[args.index("--seed") + 1] == "3"
    assert "--lora-modules" not in sim_args(spec, get_workload("no-sharing"), seed=3)


def test_pods_that_cannot_reset_their_caches_get_a_salt_unique_to_the_run(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert reset_prefix_caches([dead], timeout=2.0) is False
    spec = MatrixSpec([], [RR], [0], tmp_path, endpoints=[dead])
    with cold_fleet(spec, get_workload("no-sharing"), RR, 1, 0) as (urls, salt, how):
        assert urls == [dead] and how == SALTED and salt.startswith("[run ")
    salts = {run_salt("w", "v", run, 1.0) for run in range(50)}
    assert len(salts) == 50 and len({len(s) for s in salts}) == 1
    plan = get_workload("no-sharing").build(BuildContext(20.0, 0, salt, "m", get_profile("qwen2.5-7b-a10")))
    assert plan.schedule is not None and all(r.messages[0]["content"].startswith(salt) for r in plan.schedule)


def test_config_hashes_cover_files_and_builtin_strategies(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\n")
    assert config_hash(Variant("config:c", FrontKind.GATEWAY, config=path)) == "37b128c59f1f5097"
    assert config_hash(RR) != config_hash(PC) and len(config_hash(RR) or "") == 16
    assert config_hash(Variant("sglang-router/cache_aware", FrontKind.PEER, peer="x", policy="y")) is None


def test_a_run_that_fails_to_start_is_tried_once_more(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A flaky start (a front end exiting before it is ready) cannot be made on demand: a fake run_one."""
    import bench.compare.matrix as matrix

    calls: list[int] = []

    def flaky_run_one(*args: object) -> RunResult:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("epp gateway exited before it was ready: ImportError")
        return result(RR, 0, 1.0)

    monkeypatch.setattr(matrix, "run_one", flaky_run_one)
    monkeypatch.setattr("bench.compare.matrix.time.sleep", lambda s: None)
    spec = MatrixSpec([get_workload("no-sharing")], [RR], [0], tmp_path)
    (done,) = matrix.run_matrix(spec, Console(quiet=True))
    assert done.attempts == 2 and len(calls) == 2

    def broken_run_one(*args: object) -> RunResult:
        raise RuntimeError("still broken")

    monkeypatch.setattr(matrix, "run_one", broken_run_one)
    with pytest.raises(RuntimeError, match="still broken"):
        matrix.run_matrix(spec, Console(quiet=True))
