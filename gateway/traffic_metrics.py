"""Prometheus metrics of provider traffic (LLMRoute/LLMProvider), per route and provider.

Labels come from the config only (route and rule names, provider hosts), never from a request, so their
number is bounded; no header or key value is ever a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.labelled_metrics import LabelledValues

NO_ROUTE = "-"  # the `route` label of a request sent to a provider's own host


class TrafficMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "epp_gateway_provider_requests",
            "Provider requests by route, rule, the provider that served (or last failed) and status.",
            ["route", "rule", "provider", "status"],
            registry=r,
        )
        self.errors = Counter(
            "epp_gateway_provider_errors",
            "Failed provider attempts by route, provider and class (http_5xx, connect_failed, "
            "first_byte_timeout, reset, chunk_timeout, aborted).",
            ["route", "provider", "error"],
            registry=r,
        )
        self.fallbacks = Counter(
            "epp_gateway_provider_fallbacks",
            "Requests sent to a fallback provider: reason ejected (the target was out) or retry (it failed).",
            ["route", "from_provider", "to_provider", "reason"],
            registry=r,
        )
        self.ejections = Counter(
            "epp_gateway_provider_ejections",
            "Outlier-detection ejections of a provider host in a service (the comma-joined provider hosts "
            "a route splits over, or the host alone), by reason.",
            ["provider", "service", "reason"],
            registry=r,
        )
        self.ejected = Gauge(
            "epp_gateway_provider_ejected",
            "1 while a provider host is ejected in a service, else 0 (minHealthPercent may route to it).",
            ["provider", "service"],
            registry=r,
        )
        self.request_count = LabelledValues(self.requests)
        self.error_count = LabelledValues(self.errors)
        self.fallback_count = LabelledValues(self.fallbacks)

    def on_ejection(self, provider: str, ejected: bool, reason: str, service: str) -> None:
        """An OutlierDetector listener, with the service bound (gateway.provider_attempts)."""
        if ejected:
            self.ejections.labels(provider, service, reason).inc()
        self.ejected.labels(provider, service).set(1 if ejected else 0)
