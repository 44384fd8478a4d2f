"""`epp sim` as a real subprocess."""

from __future__ import annotations

import signal

import httpx
import pytest

from bench.sim.process import SimProcess


@pytest.mark.slow
def test_epp_sim_serves_pods_and_exits_on_sigterm():
    sim = SimProcess(
        [
            *("--pods", "2", "--base-port", "0", "--profile", "tiny", "--time-scale", "5"),
            *("--lora-modules", "travel-helper-v1", "--served-model-name", "/model/qwen"),
        ]
    )
    with sim:
        assert len(sim.urls) == 2
        with httpx.Client(timeout=10) as client:
            for url in sim.urls:
                r = client.post(f"{url}/v1/completions", json={"model": "travel-helper-v1", "prompt": "hi"})
                assert r.status_code == 200 and r.json()["model"] == "travel-helper-v1"
                assert 'model_name="/model/qwen"' in client.get(f"{url}/metrics").text
        assert sim.proc is not None
        sim.proc.send_signal(signal.SIGTERM)
        assert sim.proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_epp_sim_rejects_unknown_profile():
    with pytest.raises(RuntimeError, match="invalid choice"):
        SimProcess(["--profile", "nope", "--base-port", "0"]).start()
