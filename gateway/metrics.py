"""The gateway's own Prometheus metrics, registered next to epp's in the same registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from epp.labelled_metrics import LabelledChildren

# A proxied LLM request takes from milliseconds (an error, a cached short answer) to minutes (long output).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Time to first token: queueing plus prefill, usually well under a few seconds.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """Per-request counters and latency histograms (per-pod attempts and retries are epp's metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "epp_gateway_requests",
            "Requests answered by the gateway, by route, status, pod and result.",
            ["route", "status", "endpoint", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "epp_gateway_request_duration_seconds",
            "Time from the request's arrival to the last byte of its answer.",
            ["route", "strategy"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "epp_gateway_time_to_first_token_seconds",
            "Time from arrival to the first chunk carrying content (a JSON answer: its first byte).",
            ["route", "strategy"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.request_count = LabelledChildren(self.requests)
        self.duration_of = LabelledChildren(self.duration)
        self.ttft_of = LabelledChildren(self.ttft)
        self.in_flight = Gauge(
            "epp_gateway_in_flight_requests", "Requests the gateway is handling.", registry=r
        )
