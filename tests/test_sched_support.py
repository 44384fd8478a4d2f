"""Fakes shared by the scheduling tests: snapshots, candidates, a datastore of fresh pods, requests."""

from __future__ import annotations

import time

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.scheduling.types import Candidate, Criticality, LLMRequest, SchedulingContext


def snap(
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    running_loras: frozenset[str] = frozenset(),
    waiting_loras: frozenset[str] = frozenset(),
    max_lora: int | None = None,
) -> MetricsSnapshot:
    return MetricsSnapshot(
        waiting=waiting,
        running=running,
        kv_cache_usage=kv,
        running_loras=running_loras,
        waiting_loras=waiting_loras,
        max_lora=max_lora,
        scraped_at=time.monotonic(),
    )


def cand(name: str, in_flight: int = 0, **metrics: object) -> Candidate:
    return Candidate(Endpoint(name, "127.0.0.1", 8000), snap(**metrics), in_flight)  # type: ignore[arg-type]


def request(
    prompt: str = "hello",
    criticality: Criticality = Criticality.STANDARD,
    lora: str | None = None,
    request_id: str = "r1",
) -> LLMRequest:
    return LLMRequest(
        request_id=request_id,
        model="m",
        target_model=lora or "m",
        prompt=prompt,
        criticality=criticality,
        lora_adapter=lora,
    )


def ctx(req: LLMRequest | None = None) -> SchedulingContext:
    return SchedulingContext(req or request())


def datastore(pods: dict[str, MetricsSnapshot], in_flight: dict[str, int] | None = None) -> Datastore:
    """A datastore whose pods all have fresh metrics (staleness window far larger than any test)."""
    ds = Datastore(staleness_s=3600.0)
    ds.set_endpoints([Endpoint(name, "127.0.0.1", 8000 + i) for i, name in enumerate(pods)])
    for name, s in pods.items():
        ds.update_metrics(name, s)
    for name, n in (in_flight or {}).items():
        for _ in range(n):
            ds.acquire(name)
    return ds
