"""What a discovery source says about itself: up or serving the last known endpoints, and since when."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

logger = logging.getLogger("epp.discovery")


class DiscoveryMetrics:
    """`epp_discovery_*` on the core's registry; `mode` is `kubernetes` or `file`."""

    def __init__(self, registry: CollectorRegistry, mode: str) -> None:
        self.mode = mode
        self.up = Gauge(
            "epp_discovery_up",
            "1 when the discovery source (apiserver, file) was last read fine; 0: serving the last known "
            "endpoints.",
            ["mode"],
            registry=registry,
        ).labels(mode)
        self.endpoints = Gauge(
            "epp_discovery_endpoints",
            "Endpoints the discovery source currently lists.",
            ["mode"],
            registry=registry,
        ).labels(mode)
        self.last_sync = Gauge(
            "epp_discovery_last_sync_timestamp_seconds",
            "Unix time the discovery source was last read successfully.",
            ["mode"],
            registry=registry,
        ).labels(mode)
        self.events = Counter(
            "epp_discovery_events",
            "Changes seen: watch events by type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR), relist, reload.",
            ["mode", "resource", "type"],
            registry=registry,
        )
        self.errors = Counter(
            "epp_discovery_errors",
            "Failed reads of the discovery source (connection, HTTP status, bad document).",
            ["mode", "resource"],
            registry=registry,
        )


@dataclass
class DiscoveryStatus:
    """Up/down with the reason; logs each transition once (one WARNING per outage, not per retry)."""

    metrics: DiscoveryMetrics
    up: bool = False
    reason: str = "not synced yet"
    since: float = 0.0  # time.time() of the last transition
    endpoints: int = 0

    def synced(self, endpoints: int) -> None:
        self.endpoints = endpoints
        self.metrics.endpoints.set(endpoints)
        self.metrics.last_sync.set_to_current_time()
        if not self.up:
            if self.since:
                logger.info(
                    "discovery (%s) source reachable again: %d endpoints", self.metrics.mode, endpoints
                )
            self.up, self.reason, self.since = True, "", time.time()
            self.metrics.up.set(1)

    def failed(self, resource: str, reason: str) -> None:
        self.metrics.errors.labels(self.metrics.mode, resource).inc()
        if self.up or not self.since:
            logger.warning(
                "discovery (%s) source unreachable (%s: %s): keeping the %d last known endpoints",
                self.metrics.mode,
                resource,
                reason,
                self.endpoints,
            )
        self.up, self.reason, self.since = False, f"{resource}: {reason}", time.time()
        self.metrics.up.set(0)

    def as_dict(self) -> dict[str, object]:
        """For a health endpoint: {"mode", "up", "reason", "since", "endpoints"}."""
        return {
            "mode": self.metrics.mode,
            "up": self.up,
            "reason": self.reason,
            "since": self.since,
            "endpoints": self.endpoints,
        }
