"""Fixtures of the real-vLLM tier: two vLLM CPU pods for the whole session, and epp front ends on them.

Run by `make test-vllm` (`pytest tests/vllm -m vllm`); plain `make test` deselects the `vllm` marker.
`EPP_VLLM_PODS=host:port,host:port` with `EPP_VLLM_KV_PORTS=port,port` reuses pods started by hand (pod 0
first), which saves their start-up while a test is being written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vllm.pods import BUILD, PodSpec, VllmPod, start_pods

LOG_DIR = Path(os.environ.get("VLLM_LOG_DIR", BUILD / "logs"))


class Pods:
    """The session's pods: `urls[i]`, `addresses[i]` (host:port as epp names them)."""

    def __init__(self, addresses: list[str], kv_ports: list[int], running: list[VllmPod]) -> None:
        self.addresses = addresses
        self.urls = [f"http://{a}" for a in addresses]
        self.kv_endpoints = [f"tcp://127.0.0.1:{port}" for port in kv_ports]  # the pods bind tcp://*:PORT
        self.running = running

    @property
    def endpoints(self) -> str:
        return ",".join(self.addresses)


@pytest.fixture(scope="session")
def pods() -> Iterator[Pods]:
    if reuse := os.environ.get("EPP_VLLM_PODS"):
        kv_ports = [int(p) for p in os.environ["EPP_VLLM_KV_PORTS"].split(",")]
        yield Pods(reuse.split(","), kv_ports, [])
        return
    specs = [PodSpec(core=i, log=LOG_DIR / f"pod{i}.log") for i in range(2)]
    running = start_pods(specs)
    for pod in running:
        print(f"vLLM pod {pod.spec.address} healthy after {pod.startup_s:.1f}s (log {pod.spec.log})")
    try:
        yield Pods([s.address for s in specs], [s.kv_port for s in specs], running)
    finally:
        for pod in running:
            pod.stop()


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so `pytest tests/vllm` works under --strict-markers on its own.
    config.addinivalue_line("markers", "vllm: needs the real vLLM venv of scripts/vllm_testbed.sh")
