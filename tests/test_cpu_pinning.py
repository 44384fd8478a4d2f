"""`--pod-cpus`: the simulated fleet on CPUs of its own, the rest of a benchmark run on the others."""

import os
from pathlib import Path

import orjson
import pytest

from bench.cpu_pinning import cpu_placement, off_pod_cpus, other_cpus, parse_cpu_list, pinned
from bench.sim.process import SimProcess
from epp.cli import main

USABLE = frozenset(os.sched_getaffinity(0))


def split() -> tuple[frozenset[int], frozenset[int]]:
    """One usable CPU for the pods, the others for the rest (these machines have 2 or more)."""
    assert len(USABLE) >= 2, f"pinning needs 2 usable CPUs, this process has {sorted(USABLE)}"
    first = frozenset({min(USABLE)})
    return first, USABLE - first


def thread_cpus(pid: int) -> list[frozenset[int]]:
    """The allowed CPUs of every thread of process `pid`."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.append(frozenset(os.sched_getaffinity(int(task.name))))
    return out


def test_cpu_lists_as_taskset_writes_them() -> None:
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0,2") == {0, 2}
    assert parse_cpu_list(" 1-3, 6 ") == {1, 2, 3, 6}
    for bad in ("", ",", "a", "3-1", "-1", "0-x"):
        with pytest.raises(ValueError, match="--pod-cpus"):
            parse_cpu_list(bad)


def test_the_pods_cpus_must_be_usable_and_leave_some_over() -> None:
    pods, rest = split()
    assert other_cpus(pods) == rest
    assert cpu_placement(pods) == {
        "pod_cpus": str(min(USABLE)),
        "other_cpus": ",".join(str(c) for c in sorted(rest)),
    }
    assert cpu_placement(None) == {}
    with pytest.raises(ValueError, match="leaves no CPU"):
        other_cpus(USABLE)
    absent = max(USABLE) + 1
    with pytest.raises(ValueError, match=f"CPU {absent} is not available"):
        other_cpus(frozenset({absent}))


def test_pinned_block_runs_on_its_cpus_and_restores_the_affinity() -> None:
    pods, rest = split()
    with pinned(rest):
        assert os.sched_getaffinity(0) == rest
    assert os.sched_getaffinity(0) == USABLE
    with pytest.raises(RuntimeError), pinned(pods):
        raise RuntimeError("restored on the way out too")
    assert os.sched_getaffinity(0) == USABLE
    with pinned(None):
        assert os.sched_getaffinity(0) == USABLE
    with off_pod_cpus(pods):  # what a benchmark starts besides the fleet
        assert os.sched_getaffinity(0) == rest
    with off_pod_cpus(None):
        assert os.sched_getaffinity(0) == USABLE
    assert os.sched_getaffinity(0) == USABLE


def test_simulator_runs_every_thread_on_the_pods_cpus() -> None:
    pods, _ = split()
    with SimProcess(["--pods", "2", "--base-port", "0", "--profile", "tiny"], cpus=pods) as sim:
        assert sim.proc is not None
        assert set(thread_cpus(sim.proc.pid)) == {pods}
    assert os.sched_getaffinity(0) == USABLE  # the caller is left alone


def test_matrix_flag_errors_name_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    everything = ",".join(str(c) for c in sorted(USABLE))
    base = ["bench", "matrix", "--workloads", "no-sharing", "--strategies", "ROUND_ROBIN"]
    base += ["--scale", "ci", "--output-dir", str(tmp_path)]
    cases = [
        (["--pod-cpus", everything], "leaves no CPU for the router"),
        (["--pod-cpus", "zero"], "is not a CPU number or range"),
        (["--pod-cpus", "0", "--endpoints", "127.0.0.1:1", "--model", "m"], "not with --endpoints"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.slow
def test_pinned_matrix_run_records_where_it_ran(tmp_path: Path) -> None:
    pods, rest = split()
    out = tmp_path / "m"
    code = main(
        [
            "bench", "matrix", "--workloads", "no-sharing", "--strategies", "ROUND_ROBIN", "--scale", "ci",
            "--seeds", "3", "--time-scale", "8", "--pod-cpus", str(min(pods)), "--output-dir", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    doc = orjson.loads((out / "matrix.json").read_bytes())
    assert doc["fleet"]["pod_cpus"] == str(min(pods))
    assert doc["fleet"]["other_cpus"] == ",".join(str(c) for c in sorted(rest))
    (run,) = doc["workloads"]["no-sharing"]["variants"]["ROUND_ROBIN"]["runs"]
    assert run["failed"] == 0 and run["finished"] > 20
    assert "pod_cpus=" in (out / "matrix.md").read_text()
    assert os.sched_getaffinity(0) == USABLE


@pytest.mark.slow
def test_pinned_compare_records_where_it_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pods, rest = split()
    shape = [
        "--profile", "tiny", "--pods", "2", "--time-scale", "10", "--num-users", "2", "--num-rounds", "2",
        "--qps", "4", "--time", "4", "--answer-len", "8", "--no-progress", "--strategies", "ROUND_ROBIN",
    ]  # fmt: skip
    everything = ",".join(str(c) for c in sorted(USABLE))
    assert main(["bench", "compare", *shape, "--pod-cpus", everything]) == 2
    assert "leaves no CPU" in capsys.readouterr().err
    out = tmp_path / "cmp"
    assert main(["bench", "compare", *shape, "--pod-cpus", str(min(pods)), "--output-dir", str(out)]) == 0
    fleet = orjson.loads((out / "compare.json").read_bytes())["fleet"]
    assert fleet["pod_cpus"] == str(min(pods))
    assert fleet["other_cpus"] == ",".join(str(c) for c in sorted(rest))
    assert os.sched_getaffinity(0) == USABLE
