"""bench/peers.py: each installed peer router routes chat completions to a tiny simulated fleet."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.peers import PEER_KINDS, PeerRouter, available_peers
from bench.sim.process import SimProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed() -> list[str]:
    return available_peers()


@pytest.fixture(scope="module")
def sim_urls() -> Iterator[list[str]]:
    with SimProcess(["--pods", "2", "--profile", "tiny", "--base-port", "0", "--time-scale", "50"]) as sim:
        yield sim.urls


def chat(base_url: str, text: str) -> dict[str, object]:
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": "sim/tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 4},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def finished(pod_url: str) -> float:
    """Requests the pod finished (all reasons), from its /metrics."""
    metrics = httpx.get(f"{pod_url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


@pytest.mark.parametrize("policy", ["cache_aware", "round_robin"])
@pytest.mark.parametrize("kind", sorted(PEER_KINDS))
def test_peer_routes_chat(kind: str, policy: str, installed: list[str], sim_urls: list[str]) -> None:
    if kind not in installed:
        pytest.skip(f"{kind} is not installed (pip install -e '.[peers]')")
    with PeerRouter(kind, policy, sim_urls) as router:
        assert router.base_url.startswith("http://127.0.0.1:")
        assert router.proc is not None
        proc = router.proc
        for i in range(4):
            body = chat(router.base_url, f"question {i} about routing")
            assert body["object"] == "chat.completion"
            assert body["model"] == "sim/tiny"
    assert proc.poll() is not None  # stopped on exit
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{router.base_url}/health", timeout=1)


def test_round_robin_spreads_requests_over_workers(installed: list[str], sim_urls: list[str]) -> None:
    if not installed:
        pytest.skip("no peer router installed (pip install -e '.[peers]')")
    before = [finished(url) for url in sim_urls]
    with PeerRouter(installed[0], "round_robin", sim_urls) as router:
        for i in range(6):
            chat(router.base_url, f"spread {i}")
    served = [finished(url) - n for url, n in zip(sim_urls, before, strict=True)]
    assert sum(served) == 6
    assert all(n >= 1 for n in served), served


def test_rejects_unknown_kind_and_policy() -> None:
    with pytest.raises(ValueError, match="unknown peer router"):
        PeerRouter("nginx", "cache_aware", ["http://127.0.0.1:1"])
    with pytest.raises(ValueError, match="unknown policy"):
        PeerRouter("sglang-router", "least_load", ["http://127.0.0.1:1"])
    with pytest.raises(ValueError, match="at least one worker"):
        PeerRouter("sglang-router", "round_robin", [])
