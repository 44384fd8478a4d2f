"""End to end: `epp bench compare` runs a tiny workload through `epp gateway` on fresh simulated fleets."""

import shlex
from pathlib import Path

import orjson
import pytest

from bench.peers import free_port
from bench.sim.process import SimProcess
from epp.cli import main

TINY = [
    "--profile", "tiny", "--pods", "2", "--time-scale", "10", "--seed", "3",
    "--num-users", "3", "--num-rounds", "3", "--qps", "4", "--time", "12",
    "--shared-system-prompt", "60", "--user-history-prompt", "120", "--answer-len", "8",
    "--no-progress",
]  # fmt: skip


@pytest.mark.slow
def test_compare_writes_table_json_markdown_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    code = main(
        ["bench", "compare", *TINY, "--strategies", "ROUND_ROBIN,PREFIX_CACHE", "--output-dir", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "ROUND_ROBIN" in printed and "PREFIX_CACHE" in printed and str(out / "compare.png") in printed

    report = orjson.loads((out / "compare.json").read_bytes())
    assert report["baseline"] == "ROUND_ROBIN"
    assert report["fleet"] == {"pods": 2, "profile": "tiny", "time_scale": 10.0, "seed": 3}
    assert report["workload"]["num_users"] == 3 and "api_key" not in report["workload"]
    assert report["machine_at_start"]["nproc"] >= 1
    rr, prefix = report["variants"]
    assert (rr["name"], prefix["name"]) == ("ROUND_ROBIN", "PREFIX_CACHE")
    for variant in (rr, prefix):
        assert variant["kind"] == "epp gateway"
        assert variant["finished"] > 0 and variant["failed"] == 0
        assert 0 < variant["p50_ttft"] <= variant["p90_ttft"] <= variant["p99_ttft"]
        assert 0 < variant["hit_rate"] <= 1  # every prompt starts with the shared system prompt
        assert len(variant["pod_shares"]) == 2 and sum(variant["pod_shares"]) == pytest.approx(1)
        # The pods finished at least the requests the client saw finish (a cancelled one may finish too).
        assert sum(variant["pod_requests"]) >= variant["finished"]
    assert rr["vs_baseline"]["mean_ttft"] == 1.0
    assert prefix["vs_baseline"]["mean_ttft"] == pytest.approx(rr["mean_ttft"] / prefix["mean_ttft"])
    # Round-robin spreads requests evenly over the two pods.
    assert abs(rr["pod_requests"][0] - rr["pod_requests"][1]) <= 2

    markdown = (out / "compare.md").read_text()
    assert "| ROUND_ROBIN |" in markdown and "| PREFIX_CACHE |" in markdown and "nproc=" in markdown
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")
    for name in ("round_robin.csv", "prefix_cache.csv"):
        lines = (out / name).read_text().splitlines()
        assert lines[0].startswith("user_id,round,launch_time,ttft")
        assert len(lines) > 1


def test_bad_arguments_exit_2_without_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "compare", *TINY, "--strategies", "ROUND_ROBIN,FASTEST"]) == 2
    assert "FASTEST" in capsys.readouterr().err
    assert main(["bench", "compare", *TINY, "--endpoints", "127.0.0.1:1"]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main(["bench", "compare", *TINY, "--qps", "0"]) == 2
    assert "qps" in capsys.readouterr().err


def test_unreachable_endpoints_fail_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--endpoints", f"127.0.0.1:{free_port()}", "--model", "m", "--strategies", "DIRECT"]
    assert main(["bench", "compare", *TINY, *args, "--output-dir", str(tmp_path)]) == 1
    assert "stopped after 0 of 1 variants" in capsys.readouterr().err
    assert not (tmp_path / "compare.json").exists()


@pytest.mark.slow
def test_running_endpoints_are_shared_by_the_variants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SimProcess(["--pods", "2", "--base-port", "0", "--profile", "tiny", "--time-scale", "10"]) as sim:
        endpoints = ",".join(url.removeprefix("http://") for url in sim.urls)
        args = ["--endpoints", endpoints, "--model", "sim/tiny", "--strategies", "DIRECT,ROUND_ROBIN"]
        assert main(["bench", "compare", *TINY, *args, "--output-dir", str(tmp_path)]) == 0
    report = orjson.loads((tmp_path / "compare.json").read_bytes())
    assert report["fleet"] == {"endpoints": sim.urls}
    assert any("/reset_prefix_cache" in note for note in report["notes"])
    assert "reset_prefix_cache" in capsys.readouterr().out
    direct, rr = report["variants"]
    assert direct["kind"] == "no router" and rr["kind"] == "epp gateway"
    assert direct["finished"] > 0 and rr["finished"] > 0


@pytest.mark.slow
def test_the_reports_record_the_command_given_to_main(tmp_path: Path) -> None:
    """The arguments main() parsed, quoted for a shell, not sys.argv (pytest's own here)."""
    out = tmp_path / "a dir"  # a space, so the recorded command must quote it
    with SimProcess(["--pods", "1", "--base-port", "0", "--profile", "tiny", "--time-scale", "10"]) as sim:
        pod = ["--endpoints", sim.urls[0].removeprefix("http://"), "--model", "sim/tiny"]
        pod += ["--strategies", "DIRECT"]
        shape = ["bench", "compare", *TINY, *pod, "--output-dir", str(out / "shape")]
        workload = [
            "bench", "compare", "--workload", "no-sharing", *pod, "--runs", "1", "--duration", "5",
            "--time-scale", "10", "--output-dir", str(out / "workload"),
        ]  # fmt: skip
        assert main(shape) == 0
        assert main(workload) == 0
    for argv, report in ((shape, out / "shape" / "compare"), (workload, out / "workload" / "matrix")):
        command = shlex.join(["epp", *argv])
        assert f"'{out}" in command
        assert orjson.loads(report.with_suffix(".json").read_bytes())["command"] == command
        assert f"`{command}`" in report.with_suffix(".md").read_text()
