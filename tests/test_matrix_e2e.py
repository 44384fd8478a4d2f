"""The short workload matrix on the simulator (CI): the direction of the main results, not their size."""

from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.compare.matrix import FRESH_FLEET, RESET
from bench.sim.process import SimProcess
from epp.cli import main

# Routing results: they want the machine to themselves (Makefile, unit).
pytestmark = pytest.mark.serial


def figure(variants: dict[str, Any], variant: str, name: str) -> float:
    value: float = variants[variant]["figures"][name]["median"]
    return value


@pytest.mark.slow
def test_short_matrix_prefix_routing_hits_more_on_shared_prefixes_and_stays_balanced_on_random(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "matrix"
    # Time scale 4, not faster: at 8 a simulated 1,000-token prefill is ~30 ms of wall time, the size of a
    # loaded 2-core machine's scheduling jitter, so the TTFTs PREFIX_TOKENS learns prefill rates from become
    # noise and it skewed no-sharing (pod shares up to 2.5) when another benchmark shared the cores.
    code = main(
        [
            "bench", "matrix", "--workloads", "shared-system-prompt,no-sharing",
            "--strategies", "ROUND_ROBIN,PREFIX_CACHE,PREFIX_TOKENS", "--scale", "ci", "--seeds", "5",
            "--time-scale", "4", "--output-dir", str(out), "--goals-for", "PREFIX_TOKENS",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "shared-system-prompt" in printed and "no-sharing" in printed

    doc = orjson.loads((out / "matrix.json").read_bytes())
    assert doc["seeds"] == [5] and doc["scale"] == "ci" and doc["time_scale"] == 4.0
    assert doc["commit"] and set(doc["config_hashes"]) == {"ROUND_ROBIN", "PREFIX_CACHE", "PREFIX_TOKENS"}
    assert all(len(h) == 16 for h in doc["config_hashes"].values())
    assert doc["machine_at_start"]["nproc"] >= 1 and doc["command"].startswith("epp")
    for workload in doc["workloads"].values():
        for variant in workload["variants"].values():
            (run,) = variant["runs"]
            assert run["seed"] == 5 and run["cold_caches"] == FRESH_FLEET
            assert run["failed"] == 0 and run["finished"] > 20
            assert len(run["pod_requests"]) == 4

    shared = doc["workloads"]["shared-system-prompt"]["variants"]
    no_sharing = doc["workloads"]["no-sharing"]["variants"]
    for prefix_aware in ("PREFIX_CACHE", "PREFIX_TOKENS"):
        # All reuse the system prompt; only prefix affinity also reuses each user's own conversation.
        assert figure(shared, prefix_aware, "hit_rate") > figure(shared, "ROUND_ROBIN", "hit_rate")
        # Nothing to reuse: prefix-aware routing must still spread the requests evenly.
        assert figure(no_sharing, prefix_aware, "share_ratio") <= 1.5
        assert figure(no_sharing, prefix_aware, "hit_rate") < 0.05
    # The hot-spot trap: PREFIX_CACHE piles the new users onto the pods that first cached the system
    # prompt; the default's token-aware affinity spreads them.
    piled = shared["PREFIX_CACHE"]["figures"]["share_ratio"]["median"]  # null: inf, a pod got nothing
    spread = shared["PREFIX_TOKENS"]["figures"]["share_ratio"]["median"]
    assert spread is not None and (piled is None or spread < piled)  # every pod got some, fewer piled
    assert figure(no_sharing, "ROUND_ROBIN", "share_ratio") <= 1.1

    markdown = (out / "matrix.md").read_text()
    # The goals judged on the same report: no-sharing's balance (its share ratio, asserted above).
    assert "Goals for `PREFIX_TOKENS`" in markdown and "| balance | no-sharing | share_ratio |" in markdown
    assert "## 2. shared-system-prompt: " in markdown and "## 5. no-sharing: " in markdown
    assert (
        "| PREFIX_CACHE | 1 |" in markdown and (out / "no-sharing" / "round_robin-run1-seed5.csv").is_file()
    )


@pytest.mark.slow
def test_compare_workload_on_given_endpoints_resets_their_prefix_caches(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    with SimProcess(["--pods", "2", "--base-port", "0", "--time-scale", "8"]) as sim:
        endpoints = ",".join(url.split("://", 1)[1] for url in sim.urls)
        code = main(
            [
                "bench", "compare", "--workload", "no-sharing", "--strategies", "ROUND_ROBIN",
                "--endpoints", endpoints, "--model", "Qwen/Qwen2.5-7B-Instruct", "--scale", "ci",
                "--runs", "2", "--time-scale", "4", "--output-dir", str(out),
            ]
        )  # fmt: skip
    assert code == 0
    doc = orjson.loads((out / "matrix.json").read_bytes())
    assert doc["fleet"] == {"endpoints": sim.urls} and doc["seeds"] == [0, 1]
    runs = doc["workloads"]["no-sharing"]["variants"]["ROUND_ROBIN"]["runs"]
    assert [r["cold_caches"] for r in runs] == [RESET, RESET]
    assert all(r["failed"] == 0 and r["finished"] > 20 for r in runs)
