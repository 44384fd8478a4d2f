"""epp's own Prometheus metrics, kept in a CollectorRegistry made per app.

`EppMetrics` is both the decision recorder (called by the pick service) and the scrape observer (called by the
scraper). Per-endpoint gauges are read from the Datastore at collection time, so an endpoint that leaves the
pool leaves /metrics too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from epp.datastore import Datastore, Endpoint, EndpointEvent, MetricsSnapshot
from epp.health.endpoint_health import ROUTABLE, HealthState
from epp.labelled_metrics import LabelledChildren
from epp.picking import RESULT_SHED
from epp.scheduling.types import AttemptReport

# Scheduling takes tens of microseconds to a few milliseconds; resolve that range finely.
DECISION_LATENCY_BUCKETS = (
    1e-5,
    2.5e-5,
    5e-5,
    7.5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    7.5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    7.5e-3,
    1e-2,
    2.5e-2,
    0.1,
)
# One plugin call is a fraction of a decision: the same fine range, one decade lower at the bottom.
PLUGIN_LATENCY_BUCKETS = (1e-6, 2.5e-6, 5e-6, 7.5e-6, *DECISION_LATENCY_BUCKETS)
PREFIX_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
SCRAPE_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class DatastoreCollector(Collector):
    """Per-endpoint gauges computed from the Datastore when Prometheus collects."""

    def __init__(self, datastore: Datastore, clock: Callable[[], float] = time.monotonic) -> None:
        self._datastore = datastore
        self._clock = clock

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self._clock()
        waiting = _per_endpoint("epp_endpoint_waiting_requests", "Requests queued on the pod.")
        running = _per_endpoint("epp_endpoint_running_requests", "Requests running on the pod.")
        kv = _per_endpoint("epp_endpoint_kv_cache_usage", "KV cache usage of the pod (0..1).")
        in_flight = _per_endpoint(
            "epp_endpoint_in_flight_requests", "Requests epp sent to the pod and has not seen finish."
        )
        staleness = _per_endpoint(
            "epp_endpoint_metrics_staleness_seconds", "Seconds since the pod's last good metrics scrape."
        )
        schedulable_flag = _per_endpoint("epp_endpoint_schedulable", "1 if the pod can be picked, else 0.")
        health = GaugeMetricFamily(
            "epp_endpoint_state",
            "1 for the endpoint's current health state (healthy and slow are routable; the others say why "
            "the pod gets no traffic), 0 for the others.",
            labels=["endpoint", "state"],
        )
        restarts = _per_endpoint(
            "epp_endpoint_restarts", "Restarts of the pod seen by the scraper (the index forgets it)."
        )
        states = self._datastore.states()
        schedulable_count = 0
        for state in states:
            name = [state.endpoint.name]
            in_flight.add_metric(name, state.in_flight)
            restarts.add_metric(name, state.health.restarts)
            current = self._datastore.health_state(state, now)
            ok = current in ROUTABLE
            schedulable_count += ok
            schedulable_flag.add_metric(name, 1.0 if ok else 0.0)
            for hs in HealthState:
                health.add_metric([state.endpoint.name, hs.value], 1.0 if hs is current else 0.0)
            snap = state.metrics
            if snap is None:
                continue
            waiting.add_metric(name, snap.waiting)
            running.add_metric(name, snap.running)
            kv.add_metric(name, snap.kv_cache_usage)
            staleness.add_metric(name, max(0.0, snap.age(now)))
        yield from (waiting, running, kv, in_flight, staleness, schedulable_flag, health, restarts)
        yield GaugeMetricFamily(
            "epp_schedulable_endpoints", "Endpoints with fresh metrics.", value=schedulable_count
        )
        yield GaugeMetricFamily("epp_endpoints", "Endpoints in the pool.", value=len(states))


def _per_endpoint(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["endpoint"])


class EppMetrics:
    """Decision, plugin and scrape metrics; implements the DecisionRecorder, PluginTimer (epp.scheduling)
    and ScrapeObserver protocols."""

    def __init__(
        self,
        datastore: Datastore,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "epp_decisions", "Decisions by strategy and result.", ["strategy", "result"], registry=r
        )
        self.decision_latency = Histogram(
            "epp_decision_latency_seconds",
            "Time to make one scheduling decision.",
            ["strategy"],
            buckets=DECISION_LATENCY_BUCKETS,
            registry=r,
        )
        self.prefix_match_ratio = Histogram(
            "epp_prefix_match_ratio",
            "Fraction of the prompt's prefix blocks cached on the picked endpoint.",
            buckets=PREFIX_RATIO_BUCKETS,
            registry=r,
        )
        self.picks = Counter("epp_picks", "Requests routed to each endpoint.", ["endpoint"], registry=r)
        self.shed = Counter("epp_shed_requests", "Requests shed because the pool is saturated.", registry=r)
        self.scrape_errors = Counter(
            "epp_scrape_errors", "Failed metrics scrapes by endpoint.", ["endpoint"], registry=r
        )
        self.attempts = Counter(
            "epp_endpoint_attempts",
            "Attempts to serve a request on each pod, by how they ended (ok, 5xx, or the error: "
            "connect_failed, reset, first_byte_timeout, chunk_timeout, aborted, http_5xx, fallback, "
            "gateway_error, client_gone).",
            ["endpoint", "outcome"],
            registry=r,
        )
        self._attempt = LabelledChildren(self.attempts)
        self.retries = Counter(
            "epp_retries", "Requests scheduled again on another pod, by the failure.", ["reason"], registry=r
        )
        self.ejections = Counter(
            "epp_endpoint_ejections",
            "Outlier-detection ejections by pod and cause.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.scrape_duration = Histogram(
            "epp_scrape_duration_seconds",
            "Duration of one metrics scrape of one endpoint.",
            buckets=SCRAPE_DURATION_BUCKETS,
            registry=r,
        )
        self.plugin_duration = Histogram(
            "epp_plugin_duration_seconds",
            "Time of one scheduling plugin call, by extension point (filter, scorer, picker).",
            ["extension_point", "plugin_type", "plugin_name"],
            buckets=PLUGIN_LATENCY_BUCKETS,
            registry=r,
        )
        self._plugin = LabelledChildren(self.plugin_duration)
        self._decision = LabelledChildren(self.decisions)
        self._decision_latency = LabelledChildren(self.decision_latency)
        self._pick = LabelledChildren(self.picks)
        self._retry = LabelledChildren(self.retries)
        r.register(DatastoreCollector(datastore, clock))
        # Drop per-endpoint series of endpoints that leave the pool.
        datastore.subscribe(self._on_endpoint_event)

    def _on_endpoint_event(self, event: EndpointEvent, endpoint: Endpoint) -> None:
        if event is not EndpointEvent.REMOVED:
            return
        with contextlib.suppress(KeyError):
            self.scrape_errors.remove(endpoint.name)
        for children in (self._pick, self._attempt):
            children.remove_where(lambda values: values[0] == endpoint.name)

    # -- AttemptObserver (epp.requestcontrol) and outlier ejections ----------------
    def on_attempt(self, report: AttemptReport, outcome: str) -> None:
        self._attempt(report.endpoint.name, outcome).inc()

    def on_retry(self, reason: str) -> None:
        self._retry(reason).inc()

    def on_ejection(self, endpoint: str, ejected: bool, reason: str) -> None:
        if ejected:
            self.ejections.labels(endpoint=endpoint, reason=reason).inc()

    # -- DecisionRecorder -----------------------------------------------------
    def record_decision(
        self,
        strategy: str,
        result: str,
        latency_s: float,
        prefix_match_ratio: float | None,
        endpoint: str | None,
    ) -> None:
        """One decision: `result` is an epp.picking RESULT_* label; `endpoint` the pick, if any."""
        self._decision(strategy, result).inc()
        self._decision_latency(strategy).observe(latency_s)
        if prefix_match_ratio is not None:
            self.prefix_match_ratio.observe(min(1.0, max(0.0, prefix_match_ratio)))
        if result == RESULT_SHED:
            self.shed.inc()
        if endpoint is not None:
            self._pick(endpoint).inc()

    # -- PluginTimer ------------------------------------------------------------
    def observe_plugin(
        self, extension_point: str, plugin_type: str, plugin_name: str, seconds: float
    ) -> None:
        self._plugin(extension_point, plugin_type, plugin_name).observe(seconds)

    # -- ScrapeObserver -------------------------------------------------------
    def on_scrape(
        self,
        endpoint_name: str,
        ok: bool,
        duration_s: float,
        snapshot: MetricsSnapshot | None,
        error: str | None,
    ) -> None:
        self.scrape_duration.observe(duration_s)
        if not ok:
            self.scrape_errors.labels(endpoint=endpoint_name).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
