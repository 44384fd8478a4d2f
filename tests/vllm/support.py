"""Helpers of the real-vLLM tests: reading pod and epp metrics, waiting with a deadline, request bodies."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.vllm.pods import MODEL

T = TypeVar("T")


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` at `url`/metrics whose labels include `labels`."""
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def prefix_hits(url: str) -> float:
    return metric(url, "vllm:prefix_cache_hits_total")


def newest_lora_series(url: str) -> dict[str, str]:
    """Labels of the newest `vllm:lora_requests_info` series (vLLM keeps one per change, valued at its
    time)."""
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    samples = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "vllm:lora_requests_info"
    ]
    return dict(max(samples, key=lambda s: s.value).labels) if samples else {}


def poll(probe: Callable[[], T], what: str, deadline_s: float = 30.0) -> T:
    """Call `probe` until it returns something truthy; fail naming `what` after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last value {value!r})")
        time.sleep(0.1)


def completion(prompt: str | list[int], max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def words(seed: int, count: int) -> str:
    """A deterministic text of `count` short words (the tiny tokenizer makes roughly one token of each)."""
    return " ".join(str((seed * 7919 + i * 104729) % 1000) for i in range(count))
