"""epp's own Prometheus metrics, kept in a CollectorRegistry made per app.

`EppMetrics` is both the decision recorder (called by the pick service) and the scrape observer (called by the
scraper). Per-endpoint gauges are read from the Datastore at collection time, so an endpoint that leaves the
pool leaves /metrics too.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from epp import __version__
from epp.datastore import Datastore, Endpoint, EndpointEvent, MetricsSnapshot
from epp.health.endpoint_health import ROUTABLE, HealthState
from epp.labelled_metrics import HistogramSeries, LabelledChildren, LabelledValues
from epp.picking import RESULT_SHED
from epp.request_metrics import RequestMetrics, task_usage
from epp.scheduling.types import AttemptReport

# llm-d's scheduler/plugin boundaries (100 us .. 100 ms), preceded by finer ones: epp decides in
# microseconds. Every upstream boundary is kept, so a query written for llm-d gives the same answer.
SCHEDULER_BUCKETS: tuple[float, ...] = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
)
SCHEDULER_BUCKETS += (0.01, 0.02, 0.05, 0.1)
PREFIX_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SCRAPE_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_POOL = "default"  # the `name` label of pool metrics when the pool comes from --endpoints
PREFIX_PLUGIN = ("prefix-cache-scorer", "prefix-cache-scorer")  # (plugin_name, plugin_type) of the ratio


class DatastoreCollector(Collector):
    """Per-endpoint and pool gauges computed from the Datastore when Prometheus collects."""

    def __init__(
        self, datastore: Datastore, clock: Callable[[], float] = time.monotonic, pool_name: str = DEFAULT_POOL
    ) -> None:
        self._datastore = datastore
        self._clock = clock
        self._pool = pool_name

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self._clock()
        queue = GaugeMetricFamily(
            "llm_d_epp_per_endpoint_queue_size",
            "Requests pending in each pod's queue (last scrape).",
            labels=["name", "model_server_endpoint"],
        )
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
        ready = 0
        snaps: list[MetricsSnapshot] = []
        for state in states:
            name = [state.endpoint.name]
            in_flight.add_metric(name, state.in_flight)
            restarts.add_metric(name, state.health.restarts)
            current = self._datastore.health_state(state, now)
            ok = current in ROUTABLE
            ready += ok
            schedulable_flag.add_metric(name, 1.0 if ok else 0.0)
            for hs in HealthState:
                health.add_metric([state.endpoint.name, hs.value], 1.0 if hs is current else 0.0)
            snap = state.scraped or state.metrics  # what the pod said, not epp's bridged estimate
            if snap is None:
                continue
            snaps.append(snap)
            queue.add_metric([self._pool, state.endpoint.name], snap.waiting)
            running.add_metric(name, snap.running)
            kv.add_metric(name, snap.kv_cache_usage)
            staleness.add_metric(name, max(0.0, snap.age(now)))
        yield from (queue, running, kv, in_flight, staleness, schedulable_flag, health, restarts)
        yield from self._pool_gauges(snaps, ready)
        yield GaugeMetricFamily("epp_endpoints", "Endpoints in the pool.", value=len(states))

    def _pool_gauges(self, snaps: list[MetricsSnapshot], ready: int) -> Iterable[GaugeMetricFamily]:
        """Mean and population standard deviation over the pods with metrics (none: no sample)."""
        series = (
            ("kv_cache_utilization", "KV cache utilization (0..1)", [s.kv_cache_usage for s in snaps]),
            ("queue_size", "requests waiting in the pods' queues", [float(s.waiting) for s in snaps]),
            ("running_requests", "requests running on the pods", [float(s.running) for s in snaps]),
        )
        for suffix, what, values in series:
            mean = GaugeMetricFamily(f"llm_d_epp_average_{suffix}", f"Pool mean of {what}.", labels=["name"])
            std = GaugeMetricFamily(
                f"llm_d_epp_std_dev_{suffix}", f"Pool standard deviation of {what}.", labels=["name"]
            )
            if values:
                mean.add_metric([self._pool], statistics.fmean(values))
                std.add_metric([self._pool], statistics.pstdev(values))
            yield mean
            yield std
        ready_family = GaugeMetricFamily(
            "llm_d_epp_ready_endpoints", "Pods the picker can route to now.", labels=["name"]
        )
        ready_family.add_metric([self._pool], ready)
        yield ready_family


def _per_endpoint(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["endpoint"])


class PickerRegistry(CollectorRegistry):
    """The picker's registry; it carries the per-request families so the gateway, built on the same registry,
    feeds the same series (`requests`, set by EppMetrics)."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.requests: RequestMetrics | None = None


class EppMetrics:
    """Decision, plugin and scrape metrics; implements the DecisionRecorder, PluginTimer (epp.scheduling)
    and ScrapeObserver protocols. `requests` holds the per-request families both planes feed."""

    def __init__(
        self,
        datastore: Datastore,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        pool_name: str = DEFAULT_POOL,
        namespace: str = "",
    ) -> None:
        self.registry = registry if registry is not None else PickerRegistry()
        r = self.registry
        self._datastore = datastore
        self._namespace = namespace
        self.requests = RequestMetrics(r)
        if isinstance(r, PickerRegistry):
            r.requests = self.requests
        self.decisions = Counter(
            "epp_decisions", "Decisions by strategy and result.", ["strategy", "result"], registry=r
        )
        self.scheduler_e2e = Histogram(
            "llm_d_epp_scheduler_e2e_duration_seconds",
            "Time to make one scheduling decision (parse, admission, scheduling).",
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        self.scheduler_attempts = Counter(
            "llm_d_epp_scheduler_attempts",
            "Scheduling decisions by status; on success the picked pod.",
            ["status", "target_model_name", "endpoint_name", "namespace", "port"],
            registry=r,
        )
        self.prefix_match_ratio = Histogram(
            "llm_d_epp_prefix_indexer_hit_ratio",
            "Fraction of the prompt's prefix blocks cached on the picked endpoint (predicted).",
            ["plugin_name", "plugin_type"],
            buckets=PREFIX_RATIO_BUCKETS,
            registry=r,
        ).labels(*PREFIX_PLUGIN)
        # epp_*, not llm_d_*: no upstream (GIE / llm-d) family measures this, so it claims no compatibility.
        # Same labels and values as the predicted family, so the two compare series by series.
        self.prefix_actual_ratio = Histogram(
            "epp_prefix_cache_actual_hit_ratio",
            "Fraction of the prompt's tokens the serving pod reported cached (usage.prompt_tokens_details."
            "cached_tokens / prompt_tokens), per answered attempt that reports it.",
            ["plugin_name", "plugin_type"],
            buckets=PREFIX_RATIO_BUCKETS,
            registry=r,
        ).labels(*PREFIX_PLUGIN)
        self.shed = Counter("epp_shed_requests", "Requests shed because the pool is saturated.", registry=r)
        # The per-request observations of the label-less series above, through the cheaper writers.
        self._e2e_series = HistogramSeries(self.scheduler_e2e)
        self._prefix_ratio_series = HistogramSeries(self.prefix_match_ratio)
        self._actual_ratio_series = HistogramSeries(self.prefix_actual_ratio)
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
        self._attempt = LabelledValues(self.attempts)
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
            "llm_d_epp_plugin_duration_seconds",
            "Time of one scheduling plugin call, by extension point (filter, scorer, picker).",
            ["extension_point", "plugin_type", "plugin_name"],
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        Gauge("llm_d_epp_info", "The build of epp.", ["commit", "build_ref"], registry=r).labels(
            "", f"v{__version__}"
        ).set(1)
        self._plugin = LabelledChildren(self.plugin_duration)
        self._decision = LabelledValues(self.decisions)
        self._scheduled = LabelledValues(self.scheduler_attempts)
        self._retry = LabelledValues(self.retries)
        r.register(DatastoreCollector(datastore, clock, pool_name))
        # Drop per-endpoint series of endpoints that leave the pool.
        datastore.subscribe(self._on_endpoint_event)

    def _on_endpoint_event(self, event: EndpointEvent, endpoint: Endpoint) -> None:
        if event is not EndpointEvent.REMOVED:
            return
        with contextlib.suppress(KeyError):
            self.scrape_errors.remove(endpoint.name)
        self._attempt.remove_where(lambda values: values[0] == endpoint.name)
        self._scheduled.remove_where(lambda values: values[2] == endpoint.name)

    # -- AttemptObserver (epp.requestcontrol) and outlier ejections ----------------
    def on_attempt(self, report: AttemptReport, outcome: str) -> None:
        self._attempt(report.endpoint.name, outcome).inc()
        if report.prompt_tokens is not None or report.completion_tokens is not None:
            counts = task_usage()  # for the gateway's record step (epp.request_metrics.TASK_USAGE)
            counts.prompt, counts.completion = report.prompt_tokens, report.completion_tokens
            counts.cached = report.cached_prompt_tokens
        prompt, cached = report.prompt_tokens, report.cached_prompt_tokens
        if prompt and prompt > 0 and cached is not None:
            self._actual_ratio_series.observe(min(1.0, max(0.0, cached / prompt)))

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
        self._e2e_series.observe(latency_s)
        self.requests.request_processing_series.observe(latency_s)
        if prefix_match_ratio is not None:
            self._prefix_ratio_series.observe(min(1.0, max(0.0, prefix_match_ratio)))
        if result == RESULT_SHED:
            self.shed.inc()
        if endpoint is None:
            self._scheduled("failure", "", "", "", "").inc()
            return
        state = self._datastore.get(endpoint)
        port = str(state.endpoint.port) if state is not None else ""
        self._scheduled("success", "", endpoint, self._namespace, port).inc()

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
