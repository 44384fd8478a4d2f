"""bench/compare/cold_requests.py: first requests' share, and the p90 floor they set, from a matrix's CSVs."""

import csv
from pathlib import Path

import pytest

from bench.compare.cold_requests import RunCold, main, p90_is_first_or_slower, run_cold
from bench.multi_round_qa.summary import CSV_COLUMNS

Row = tuple[int, float, float, str]


def write_run(path: Path, rows: list[Row]) -> None:
    """rows: (user_id, launch_time, ttft, status)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS)
        writer.writeheader()
        for user, launch, ttft, status in rows:
            writer.writerow(
                {"user_id": user, "round": 1, "launch_time": launch, "ttft": ttft, "status": status}
            )


def run_rows(first_ttft: float, later_ttft: float, users: int = 2, rounds: int = 5) -> list[Row]:
    """`users` users with `rounds` requests each: their first at first_ttft, the rest at later_ttft."""
    rows = []
    for r in range(rounds):
        for u in range(users):
            rows.append((u, r * 10.0 + u, first_ttft + u * 0.01 if r == 0 else later_ttft, "ok"))
    return rows


def test_first_requests_are_each_users_first_in_launch_order(tmp_path: Path) -> None:
    path = tmp_path / "w" / "x-run1-seed0.csv"
    rows = run_rows(1.0, 0.1)
    rows.append((2, 99.0, 0.5, "error"))  # a user whose only request failed: no TTFT, not counted
    rows.reverse()  # the reader orders by launch time
    write_run(path, rows)
    run = run_cold(path)
    assert (run.requests, run.first, run.first_share) == (10, 2, 0.2)
    assert (run.first_min, run.first_median) == (1.0, 1.005)
    assert run.p90_rest == pytest.approx(0.1)
    assert p90_is_first_or_slower(run) and run.p90 >= run.first_min


def test_p90_floor_only_where_first_requests_reach_its_rank() -> None:
    # 818 requests: p90 sits at rank 735.3, so the slowest 83 hold it; 82 first requests do not reach it.
    assert p90_is_first_or_slower(RunCold(818, 83, 1.0, 1.0, 1.0, 0.1))
    assert not p90_is_first_or_slower(RunCold(818, 82, 1.0, 1.0, 1.0, 0.1))


def test_report_names_the_floor_and_the_best_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path / "mrqa" / "round_robin-run1-seed0.csv", run_rows(1.0, 2.5))
    write_run(tmp_path / "mrqa" / "prefix_tokens-run1-seed0.csv", run_rows(0.9, 0.1))
    write_run(tmp_path / "other" / "round_robin-run1-seed0.csv", run_rows(1.0, 0.1, users=1, rounds=20))
    assert main([str(tmp_path), "--workloads", "mrqa"]) == 0
    out = capsys.readouterr().out
    assert "#### mrqa" in out and "#### other" not in out
    assert "| prefix_tokens | 1 | 10 | 20.0% | 0.900 | 0.905 |" in out
    # round-robin's p90 is 2.5 (its later requests); the fastest first request 0.9: at best x2.778.
    assert "in 2 of 2 runs; the fastest first request of any run: 0.900 s" in out
    assert "round_robin's median p90 2.500 s: no router's p90 can beat it by more than x2.778" in out
    assert main([str(tmp_path), "--workloads", "other"]) == 0
    assert "p90 is a first request" not in capsys.readouterr().out  # 1 first request in 20


def test_a_directory_without_runs_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing")])
    assert exc.value.code == 2
    assert "no workload directory" in capsys.readouterr().err
