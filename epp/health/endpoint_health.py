"""Why an endpoint may or may not receive traffic: one field per source, and the state they add up to.

Sources, each with its own field on `EndpointHealth`:
- the scraper: a good scrape refreshes the metrics; a scrape that timed out makes the pod *slow* (still
  routable while its last metrics are younger than the staleness bound); one that was refused, reset or
  answered with an HTTP error makes it *unreachable*;
- the proxy (gateway or Envoy): a refused or reset connection makes the pod *unreachable* too;
- outlier detection (epp.health.outlier): consecutive 5xx or gateway errors make it *ejected*;
- restarts (counters went back or the start time changed) are counted; the prefix index forgets the pod.

A pod the proxy could not reach backs off on its own: it stays out for a back-off (doubling with every
such mark in a row, capped, reset by an answered request) and comes back at the first good scrape after
that. A pod whose scrape was refused comes back at its next good scrape.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

UNREACHABLE_BACKOFF_BASE_S = 0.25
UNREACHABLE_BACKOFF_CAP_S = 5.0


class HealthState(Enum):
    """Routable states first; the value is the `state` label of `epp_endpoint_state`."""

    HEALTHY = "healthy"
    SLOW = "slow"  # the last scrape timed out, the metrics before it are still fresh enough
    UNSCRAPED = "unscraped"  # no good scrape yet
    STALE = "stale"  # the last good metrics are older than the staleness bound
    UNREACHABLE = "unreachable"
    EJECTED = "ejected"


ROUTABLE = frozenset({HealthState.HEALTHY, HealthState.SLOW})


@dataclass(slots=True)
class EndpointHealth:
    """Mutable health facts of one endpoint, each set by its own source."""

    scrape_error: str | None = None  # last scrape's error, None after a good scrape
    scrape_timed_out: bool = False  # the last scrape failed by timing out (slow, not down)
    consecutive_scrape_failures: int = 0
    unreachable_reason: str | None = None  # "scrape: ..." or "proxy: ..."; None when reachable
    unreachable_until: float = 0.0  # back-off: not routable before this, even after a good scrape
    unreachable_strikes: int = 0  # marks in a row; reset by a successful request
    restarts: int = 0

    def mark_unreachable(self, reason: str, now: float, backoff: bool = True) -> None:
        self.unreachable_reason = reason
        if backoff:
            self.unreachable_strikes += 1
            delay = UNREACHABLE_BACKOFF_BASE_S * 2 ** (self.unreachable_strikes - 1)
            self.unreachable_until = max(self.unreachable_until, now + min(UNREACHABLE_BACKOFF_CAP_S, delay))

    def scrape_succeeded(self, now: float) -> None:
        self.scrape_error = None
        self.scrape_timed_out = False
        self.consecutive_scrape_failures = 0
        if self.unreachable_reason is not None and now >= self.unreachable_until:
            self.unreachable_reason = None

    def scrape_failed(self, error: str, timed_out: bool, now: float) -> None:
        self.scrape_error = error
        self.scrape_timed_out = timed_out
        self.consecutive_scrape_failures += 1
        if not timed_out:
            self.mark_unreachable(f"scrape: {error}", now, backoff=False)

    def request_succeeded(self) -> None:
        self.unreachable_strikes = 0


def classify(
    health: EndpointHealth, metrics_age_s: float | None, staleness_s: float, ejected: bool
) -> HealthState:
    """The state that decides routing; the first reason that keeps a pod out wins."""
    if health.unreachable_reason is not None:
        return HealthState.UNREACHABLE
    if ejected:
        return HealthState.EJECTED
    if metrics_age_s is None:
        return HealthState.UNSCRAPED
    if metrics_age_s > staleness_s:
        return HealthState.STALE
    return HealthState.SLOW if health.scrape_timed_out else HealthState.HEALTHY
