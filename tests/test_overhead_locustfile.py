"""bench/locustfile.py: a short headless locust run against a tiny simulated pod."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.sim.process import SimProcess

pytestmark = pytest.mark.slow

LOCUSTFILE = Path(__file__).resolve().parent.parent / "bench" / "locustfile.py"
LOCUST = Path(sys.executable).parent / "locust"


@pytest.fixture(scope="module")
def pod_url() -> Iterator[str]:
    if not LOCUST.exists() and shutil.which("locust") is None:
        pytest.skip("locust is not installed (pip install -e '.[bench]')")
    with SimProcess(["--pods", "1", "--profile", "tiny", "--base-port", "0", "--time-scale", "50"]) as sim:
        yield sim.urls[0]


def run_locust(url: str, model: str, tmp_path: Path) -> dict[str, dict[str, str]]:
    """Rows of locust's stats CSV keyed by request name, after a 3 s headless run with 3 users."""
    exe = str(LOCUST) if LOCUST.exists() else "locust"
    prefix = tmp_path / "run"
    # A subprocess: locust monkey-patches the standard library with gevent when imported.
    load = ["--headless", "-u", "3", "-r", "3", "-t", "3s", "--csv", str(prefix), "--only-summary"]
    workload = ["--model", model, "--rounds", "3", "--answer-len", "4"]
    prompts = ["--system-prompt-len", "40", "--history-len", "60"]
    subprocess.run(
        [exe, "-f", str(LOCUSTFILE), "--host", url, *load, *workload, *prompts, "--exit-code-on-error", "0"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_multi_turn_users_get_answers(pod_url: str, tmp_path: Path) -> None:
    rows = run_locust(pod_url, "sim/tiny", tmp_path)
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0
    # Users carry their history into later rounds.
    assert int(rows["chat round 2"]["Request Count"]) > 0


def test_unknown_model_counts_as_failures(pod_url: str, tmp_path: Path) -> None:
    total = run_locust(pod_url, "no-such-model", tmp_path)["Aggregated"]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == int(total["Request Count"])
