"""What the follower knows of each pod's KV-event stream: its status (for /healthz, logs, tests) and the
`epp_kv_events_*` Prometheus series."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

SYNCED = "synced"
UNKNOWN = "unknown"
NOT_SUBSCRIBED = "not subscribed"


@dataclass
class PodStatus:
    """What is known of one pod's event stream, for /healthz, logs and tests."""

    state: str = NOT_SUBSCRIBED
    reason: str = "starting"
    sources: list[str] = field(default_factory=list)
    last_seq: int | None = None
    messages: int = 0
    gaps: int = 0
    gaps_filled: int = 0
    lost_messages: int = 0
    replays: int = 0
    restarts: int = 0
    resets: int = 0
    since: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items()}


class FollowerMetrics:
    """`epp_kv_events_*` on the core's registry, one series per pod."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.messages = Counter(
            "epp_kv_events_messages",
            "KV-event messages applied (live or replayed).",
            ["pod"],
            registry=registry,
        )
        self.gaps = Counter(
            "epp_kv_events_gaps",
            "Sequence gaps; outcome `filled` (replayed) or `lost` (the pod's view became unknown).",
            ["pod", "outcome"],
            registry=registry,
        )
        self.resets = Counter(
            "epp_kv_events_resets",
            "Times a pod's blocks were dropped; reason: gap, restart, disconnect, scrape_restart, error.",
            ["pod", "reason"],
            registry=registry,
        )
        self.synced = Gauge(
            "epp_kv_events_synced",
            "1 when the pod's KV-event view is synced (precise scoring), 0 while it is unknown.",
            ["pod"],
            registry=registry,
        )

    def forget(self, pod: str) -> None:
        for metric in (self.messages, self.synced):
            with contextlib.suppress(KeyError):
                metric.remove(pod)
        for family in (self.gaps, self.resets):
            for labels in [s.labels for m in family.collect() for s in m.samples]:
                if labels.get("pod") == pod and len(labels) == 2:
                    with contextlib.suppress(KeyError):
                        family.remove(*labels.values())
