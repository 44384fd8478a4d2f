"""Helpers for the Envoy tests: simulator pods, pod and epp metrics, Envoy stats."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.sim.process import SimProcess

T = TypeVar("T")
MODEL = "sim/tiny"


def sim_pods(pods: int, time_scale: float = 1.0) -> SimProcess:
    """An unstarted `epp sim` process serving `pods` tiny pods on free ports."""
    args = ["--pods", str(pods), "--profile", "tiny", "--time-scale", str(time_scale), "--base-port", "0"]
    return SimProcess(args)


def addresses(*sims: SimProcess) -> list[str]:
    return [url.removeprefix("http://") for sim in sims for url in sim.urls]


def metric_sum(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` at `url`/metrics whose labels include `labels`."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def served(pod_urls: list[str]) -> list[float]:
    """Requests each pod finished so far."""
    return [metric_sum(url, "vllm:request_success_total") for url in pod_urls]


def envoy_stat(admin_url: str, name: str) -> int:
    text = httpx.get(f"{admin_url}/stats", params={"filter": f"^{name}$"}, timeout=5).text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise AssertionError(f"Envoy has no stat {name!r}")


def poll(probe: Callable[[], T], what: str, deadline_s: float = 15.0) -> T:
    """Call `probe` until it returns something truthy; fail naming `what` after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last value {value!r})")
        time.sleep(0.02)


def chat_body(content: str, max_tokens: int = 5, stream: bool = False) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
