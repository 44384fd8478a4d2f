"""deploy/grafana/*.json is what bench/dashboards generates (grafana-foundation-sdk), and is importable.

Regenerate after changing the code: `python -m bench.dashboards`.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from bench.dashboards.generate import DASHBOARDS, OUT_DIR, main, rendered
from bench.observe.queries import dashboard_files, dashboard_queries

SDK_VERSION = "1769699379!11.6.0"  # Grafana 11.6 builders; pinned in pyproject.toml


def load(name: str) -> dict[str, Any]:
    model: dict[str, Any] = json.loads((OUT_DIR / name).read_text())
    return model


def test_the_pinned_sdk_builds_them() -> None:
    assert metadata.version("grafana-foundation-sdk") == SDK_VERSION


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_committed_json_matches_the_generator(name: str) -> None:
    committed = (OUT_DIR / name).read_text()
    assert committed == rendered()[name], f"{name} is stale: run `python -m bench.dashboards`"


def test_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == set(DASHBOARDS)
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "epp-picker.json").write_text("{}")
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "epp-picker.json" in capsys.readouterr().out


def test_every_committed_dashboard_is_generated() -> None:
    assert {p.name for p in dashboard_files()} == set(DASHBOARDS)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_importable(name: str) -> None:
    model = load(name)
    assert model["uid"] and model["title"].startswith("epp / ")
    panels = model["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    variables = {v["name"] for v in model["templating"]["list"]}
    assert "datasource" in variables
    titles = [p["title"] for p in panels if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "panel titles repeat"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    used = " ".join(json.dumps(p.get("targets", [])) for p in panels)
    used += " ".join(str(v.get("query", "")) for v in model["templating"]["list"])
    for variable in variables - {"datasource"}:
        assert f"${variable}" in used, f"variable ${variable} is never used"


def test_queries_substitute_every_variable() -> None:
    for path in dashboard_files():
        for query in dashboard_queries(path, "1m"):
            assert "$" not in query.expr, query


def test_picker_compares_predicted_and_actual_prefix_hits() -> None:
    panel = next(
        p for p in load("epp-picker.json")["panels"] if p["title"].startswith("Prefix cache hit ratio")
    )
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert "llm_d_epp_prefix_indexer_hit_ratio" in exprs
    assert "vllm:prefix_cache_hits_total" in exprs and "vllm:prefix_cache_queries_total" in exprs


def test_picker_says_why_a_pod_gets_no_traffic() -> None:
    exprs = " ".join(t["expr"] for p in load("epp-picker.json")["panels"] for t in p.get("targets", []))
    for family in (
        "epp_endpoint_state",
        "epp_endpoint_ejections_total",
        "epp_endpoint_metrics_staleness_seconds",
    ):
        assert family in exprs


def test_gateway_covers_routes_providers_fallbacks_and_cache() -> None:
    exprs = " ".join(t["expr"] for p in load("epp-gateway.json")["panels"] for t in p.get("targets", []))
    for family in (
        "epp_gateway_provider_requests_total",
        "epp_gateway_provider_fallbacks_total",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "epp_cache_requests_total",
    ):
        assert family in exprs
