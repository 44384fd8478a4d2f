"""The gateway's own Prometheus metrics, registered next to epp's in the same registry.

Latency and tokens are the OpenTelemetry GenAI families (`genai`, epp.otel_metrics); the picker's per-request
families (`llm_d_epp_request_*`) are epp's (`EppMetrics.requests`). Here: what only the gateway knows.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.labelled_metrics import LabelledValues, ValueSeries
from epp.metrics import PickerRegistry
from epp.otel_metrics import GenAIMetrics
from epp.request_metrics import RequestMetrics


class GatewayMetrics:
    """Per-request counts by route and result, and requests in flight (per-pod attempts are epp's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "epp_gateway_requests",
            "Requests answered by the gateway, by route, status, pod and result.",
            ["route", "status", "endpoint", "result"],
            registry=r,
        )
        self.request_count = LabelledValues(self.requests)
        self.in_flight_gauge = Gauge(
            "epp_gateway_in_flight_requests", "Requests the gateway is handling.", registry=r
        )
        self.in_flight = ValueSeries(self.in_flight_gauge)  # moved on every request: the cheaper writer
        self.genai = GenAIMetrics(r)
        # The picker's llm_d_epp_request_* families when the registry is the picker's (registered once)
        self.picker: RequestMetrics | None = (
            registry.requests if isinstance(registry, PickerRegistry) else None
        )
