from pathlib import Path

import pytest

from bench import sched_microbench


def test_microbench_runs_a_small_grid_and_writes_markdown(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.md"
    argv = ["--prompt-chars", "1000,2000", "--pods", "4", "--iterations", "20", "--warmup", "5"]
    assert sched_microbench.main([*argv, "--markdown", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1:3] for r in rows] == [[" 1,000 ", " 4 "], [" 2,000 ", " 4 "]]
    for row in rows:
        p50, p99 = float(row.split("|")[3]), float(row.split("|")[4])
        assert 0 < p50 <= p99
    assert "strategy: PREFIX_CACHE" in capsys.readouterr().out


def test_microbench_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        sched_microbench.main(["--pods", "0"])
    with pytest.raises(SystemExit):
        sched_microbench.main(["--strategy", "NOPE"])
