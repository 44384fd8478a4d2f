"""Issue 16's goals read off a matrix report: each check's verdict, and the CLI's errors."""

from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.compare.matrix_goals import check_goals, main, markdown


def variant(kind: str, **medians: float | str | None) -> dict[str, Any]:
    """Medians as the JSON has them: None is an infinity over 3 runs, "missing" a figure no run had."""
    figures = {
        k: {"median": None, "low": None, "high": None, "runs": 0}
        if v == "missing"
        else {"median": v, "low": v, "high": v, "runs": 3}
        for k, v in medians.items()
    }
    return {"kind": kind, "figures": figures}


def doc() -> dict[str, Any]:
    rr = variant("epp gateway", mean_ttft=1.0, p90_ttft=2.0, p99_ttft=4.0, share_ratio=1.0)
    return {
        "workloads": {
            "shared-system-prompt": {
                "variants": {
                    "ROUND_ROBIN": rr,
                    # 2.5x better mean, 1.9x better p90 (gain missed), p99 1.04x round-robin's (tail met)
                    "PT": variant(
                        "epp gateway", mean_ttft=0.4, p90_ttft=2.0 / 1.9, p99_ttft=4.16, share_ratio=1.6
                    ),
                    "sglang-router/cache_aware": variant(
                        "peer router", mean_ttft=0.5, p90_ttft=1.0, p99_ttft=5.0
                    ),
                    "vllm-router/cache_aware": variant(
                        "peer router", mean_ttft=0.3, p90_ttft=3.0, p99_ttft=6.0
                    ),
                }
            },
            "no-sharing": {
                "variants": {
                    "ROUND_ROBIN": rr,
                    "PT": variant(
                        "epp gateway", mean_ttft=1.0, p90_ttft=2.2, p99_ttft="missing", share_ratio=1.2
                    ),
                    # a pod got nothing: the share ratio is inf, written as null
                    "PC": variant("epp gateway", mean_ttft=1.0, p90_ttft=2.0, p99_ttft=4.0, share_ratio=None),
                }
            },
        }
    }


def verdicts(checks: list[Any]) -> dict[tuple[str, str, str], bool | None]:
    return {(c.goal, c.workload, c.figure): c.met for c in checks}


def test_each_goal_is_judged_on_the_medians() -> None:
    got = verdicts(check_goals(doc(), "PT"))
    ssp, ns = "shared-system-prompt", "no-sharing"
    assert got == {
        ("tail", ssp, "p90_ttft"): True,
        ("tail", ssp, "p99_ttft"): True,  # 4.16 <= 1.05 x 4.0
        ("gain", ssp, "mean_ttft"): True,
        ("gain", ssp, "p90_ttft"): False,  # 1.9x < 2x
        # best peer per figure: vllm-router's mean, sglang-router's p90 and p99
        ("peers", ssp, "mean_ttft"): False,
        ("peers", ssp, "p90_ttft"): False,
        ("peers", ssp, "p99_ttft"): True,
        ("balance", ssp, "share_ratio"): False,
        # no-sharing: no gain goal (workload 5); p99 unknown; no peers ran
        ("tail", ns, "p90_ttft"): False,  # 2.2 > 2.1
        ("tail", ns, "p99_ttft"): None,
        ("balance", ns, "share_ratio"): True,
    }
    peers = {c.figure: c.against for c in check_goals(doc(), "PT") if c.goal == "peers"}
    assert peers == {
        "mean_ttft": "vllm-router/cache_aware",
        "p90_ttft": "sglang-router/cache_aware",
        "p99_ttft": "sglang-router/cache_aware",
    }


def test_markdown_counts_and_lists_every_check() -> None:
    text = markdown(check_goals(doc(), "PT"), "PT")
    assert "- tail: 2 of 3 met (1 not judged: a figure is missing)" in text
    assert "- gain: 1 of 2 met" in text and "- balance: 1 of 2 met" in text
    assert (
        "| gain | shared-system-prompt | p90 | 1.053 | ROUND_ROBIN | 2.000 | 1.90x better | **missed** |"
        in text
    )
    assert "| tail | no-sharing | p99 | n/a | ROUND_ROBIN | 4.000 | n/a | n/a |" in text
    infinite = markdown(check_goals(doc(), "PC"), "PC")
    assert "| balance | no-sharing | share_ratio | inf | bound | 1.50 | n/a | **missed** |" in infinite


def test_cli_prints_the_goals_and_refuses_a_bad_file_or_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "matrix.json"
    path.write_bytes(orjson.dumps(doc()))
    assert main([str(path), "--candidate", "PT"]) == 0
    assert "Goals for `PT`" in capsys.readouterr().out
    assert main([str(path), "--candidate", "NOPE"]) == 2
    assert "no variant named 'NOPE'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main([str(bad), "--candidate", "PT"]) == 2
    assert "bad.json: not a matrix report" in capsys.readouterr().err
