import random
from pathlib import Path

import pytest

from bench import sched_microbench
from epp.config import DEFAULT_STRATEGY, builtin_strategy
from epp.scheduling.builder import build_scheduler
from scorers.builtin import default_registry
from scorers.prefill_load_scorer import PrefillLoadScorer


def test_microbench_runs_a_small_grid_and_writes_markdown(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.md"
    argv = ["--prompt-chars", "1000,2000", "--pods", "4", "--iterations", "20", "--warmup", "5"]
    assert sched_microbench.main([*argv, "--markdown", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1:3] for r in rows] == [[" 1,000 ", " 4 "], [" 2,000 ", " 4 "]]
    for row in rows:
        p50, p99 = float(row.split("|")[3]), float(row.split("|")[4])
        assert 0 < p50 <= p99
    assert f"strategy: {DEFAULT_STRATEGY.value}; in flight per pod: 2;" in capsys.readouterr().out


def test_requests_end_after_the_in_flight_window() -> None:
    rng = random.Random(0)
    datastore = sched_microbench.make_datastore(4, rng)
    config = builtin_strategy(DEFAULT_STRATEGY)
    scheduler = build_scheduler(config, datastore, default_registry(), rng)
    in_flight = sched_microbench.InFlight(scheduler, datastore, 8)
    work = sched_microbench.Workload(rng, 2000)
    for _ in range(30):
        in_flight.sent(sched_microbench.decide(scheduler, work.next_request()))
    assert sum(s.in_flight for s in datastore.schedulable()) == 8  # the 22 others ended
    load = next(p for p in scheduler.profile(None).pre_requests if isinstance(p, PrefillLoadScorer))
    assert sum(len(q.entries) for q in load.backlog._pods.values()) <= 8


def test_microbench_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        sched_microbench.main(["--pods", "0"])
    with pytest.raises(SystemExit):
        sched_microbench.main(["--strategy", "NOPE"])
    with pytest.raises(SystemExit):
        sched_microbench.main(["--in-flight-per-pod", "-1"])
