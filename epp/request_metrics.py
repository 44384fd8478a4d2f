"""The picker's per-request metrics under the llm-d router's names (`llm_d_epp_request_*`, ext_proc streams,
request/response processing), fed by both planes: the gateway's record step and Envoy's access log.

Names, types, labels and buckets follow llm-d-router's pkg/epp/metrics (docs/operations.md, "Metrics
reference"). Model names and fairness ids come from clients: each is a CappedLabel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from epp.labelled_metrics import (
    DEFAULT_LABEL_CAP,
    CappedLabel,
    HistogramSeries,
    LabelledSeries,
    LabelledValues,
    ValueSeries,
)
from epp.scheduling.types import Criticality, LLMRequest

FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
DEFAULT_FAIRNESS_ID = "default-flow"
# The InferenceObjective priority each v1alpha2 criticality maps to (negative: sheddable).
PRIORITY_OF = {Criticality.CRITICAL: "1", Criticality.STANDARD: "0", Criticality.SHEDDABLE: "-1"}
MODEL_LABELS = ("model_name", "target_model_name", "fairness_id", "priority")

LATENCY_BUCKETS = (
    *(
        0.005,
        0.025,
        0.05,
        0.1,
        0.2,
        0.4,
        0.6,
        0.8,
        1.0,
        1.25,
        1.5,
        2,
        3,
        4,
        5,
        6,
        8,
        10,
        15,
        20,
        30,
        45,
        60,
        120,
    ),
    *(180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600),
)
TTFT_BUCKETS = LATENCY_BUCKETS[: LATENCY_BUCKETS.index(120) + 1]
TPOT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.00205,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.125,
    0.15,
    0.2,
)
TPOT_BUCKETS += (0.3, 0.4, 0.5, 0.6, 0.8, 1, 2)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2)
NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
REQUEST_SIZE_BUCKETS = tuple(float(2**i) for i in range(6, 31))  # 64 B .. 1 GiB
RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536)
INPUT_TOKEN_BUCKETS: tuple[float, ...] = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
)
INPUT_TOKEN_BUCKETS += (131072, 262144, 524288, 1048576)
OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
REQUEST_PROCESSING_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.015,
    0.025,
    0.04,
    0.06,
    0.1,
    0.25,
    0.5,
)
REQUEST_PROCESSING_BUCKETS += (1, 2.5, 5, 10)
RESPONSE_PROCESSING_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
RESPONSE_PROCESSING_BUCKETS += (0.25, 0.5, 1, 2.5, 5)
STREAM_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600)

Labels = tuple[str, str, str, str]  # MODEL_LABELS' values


@dataclass(slots=True)
class TokenCounts:
    prompt: int | None = None
    completion: int | None = None
    cached: int | None = None


# The usage of the request the current task serves, as its upstream reported it: set where the attempt
# completes (the gateway relays the answer in the request's own task), read and cleared by the record step,
# which runs at the end of that task. Per task, so concurrent requests never see each other's.
TASK_USAGE: ContextVar[TokenCounts | None] = ContextVar("epp_task_usage", default=None)


def task_usage() -> TokenCounts:
    """This task's TokenCounts, created on first use."""
    counts = TASK_USAGE.get()
    if counts is None:
        counts = TokenCounts()
        TASK_USAGE.set(counts)
    return counts


def take_task_usage() -> TokenCounts | None:
    """This task's TokenCounts, cleared (a keep-alive connection's next request starts afresh)."""
    counts = TASK_USAGE.get()
    if counts is not None:
        TASK_USAGE.set(None)
    return counts


@dataclass(slots=True)
class RequestFacts:
    """What one finished request looked like, as far as its plane knows (None: not known)."""

    status: int
    duration_s: float
    streaming: bool = False
    ttft_s: float | None = None
    request_bytes: int | None = None
    response_bytes: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    chunk_gaps_s: Sequence[float] = field(default_factory=tuple)  # between content chunks (streaming)


class RequestMetrics:
    """`llm_d_epp_request_*`, `llm_d_epp_*_processing_duration_seconds` and `llm_d_epp_extproc_*`."""

    def __init__(self, registry: CollectorRegistry, label_cap: int = DEFAULT_LABEL_CAP) -> None:
        r, labels = registry, MODEL_LABELS
        self._model = CappedLabel(label_cap)
        self._target = CappedLabel(label_cap)
        self._fairness = CappedLabel(label_cap)

        def histogram(
            name: str, doc: str, buckets: Sequence[float], extra: tuple[str, ...] = ()
        ) -> Histogram:
            return Histogram(name, doc, [*labels, *extra], buckets=buckets, registry=r)

        self.total = LabelledValues(
            Counter("llm_d_epp_request", "Requests routed or refused.", labels, registry=r)
        )
        self.errors = LabelledValues(
            Counter(
                "llm_d_epp_request_error",
                "Requests ended in an error status.",
                [*labels, "error_code"],
                registry=r,
            )
        )
        self.duration = LabelledSeries(
            histogram(
                "llm_d_epp_request_duration_seconds", "Arrival to the answer's last byte.", LATENCY_BUCKETS
            )
        )
        self.request_size = LabelledSeries(
            histogram("llm_d_epp_request_size_bytes", "Request body size.", REQUEST_SIZE_BUCKETS)
        )
        self.response_size = LabelledSeries(
            histogram("llm_d_epp_response_size_bytes", "Response body size.", RESPONSE_SIZE_BUCKETS)
        )
        self.input_tokens = LabelledSeries(
            histogram("llm_d_epp_request_input_tokens", "Prompt tokens per request.", INPUT_TOKEN_BUCKETS)
        )
        self.output_tokens = LabelledSeries(
            histogram(
                "llm_d_epp_request_output_tokens", "Completion tokens per request.", OUTPUT_TOKEN_BUCKETS
            )
        )
        self.cached_tokens = LabelledSeries(
            histogram(
                "llm_d_epp_request_cached_tokens", "Prompt tokens read from cache.", INPUT_TOKEN_BUCKETS
            )
        )
        self.running = LabelledValues(
            Gauge("llm_d_epp_request_running", "Requests routed and not over.", labels, registry=r)
        )
        self.ttft = LabelledSeries(
            histogram(
                "llm_d_epp_request_ttft_seconds",
                "Arrival to the first content chunk.",
                TTFT_BUCKETS,
                ("streaming",),
            )
        )
        self.tpot = LabelledSeries(
            histogram(
                "llm_d_epp_request_streaming_tpot_seconds",
                "Streaming: (duration - TTFT) / (output tokens - 1).",
                TPOT_BUCKETS,
            )
        )
        self.itl = LabelledSeries(
            histogram(
                "llm_d_epp_request_streaming_itl_seconds", "Streaming: time between chunks.", ITL_BUCKETS
            )
        )
        self.ntpot = LabelledSeries(
            histogram("llm_d_epp_request_ntpot_seconds", "Duration / output tokens.", NTPOT_BUCKETS)
        )
        self.request_processing = Histogram(
            "llm_d_epp_request_processing_duration_seconds",
            "Picker time before the request goes out: parse, admission and scheduling.",
            buckets=REQUEST_PROCESSING_BUCKETS,
            registry=r,
        )
        self.response_processing = Histogram(
            "llm_d_epp_response_processing_duration_seconds",
            "Picker time spent on the response.",
            buckets=RESPONSE_PROCESSING_BUCKETS,
            registry=r,
        )
        self.streams_inflight = Gauge(
            "llm_d_epp_extproc_streams_inflight", "ext_proc gRPC streams open now.", registry=r
        )
        self.stream_duration = Histogram(
            "llm_d_epp_extproc_stream_duration_seconds",
            "How long an ext_proc stream stayed open.",
            buckets=STREAM_DURATION_BUCKETS,
            registry=r,
        )
        self.streams = LabelledValues(
            Counter(
                "llm_d_epp_extproc_streams", "ext_proc streams ended, by gRPC status.", ["code"], registry=r
            )
        )
        # The same series as the three label-less histograms above, observed on every request through these.
        self.request_processing_series = HistogramSeries(self.request_processing)
        self.response_processing_series = HistogramSeries(self.response_processing)
        self._stream_duration = HistogramSeries(self.stream_duration)
        self._streams_inflight = ValueSeries(self.streams_inflight)

    def reserve_models(self, names: Iterable[str]) -> None:
        """Models the config names: they keep their own label whatever clients send."""
        names = list(names)
        self._model.reserve(names)
        self._target.reserve(names)

    def labels(self, request: LLMRequest) -> Labels:
        """The request's label values, client-controlled ones capped."""
        fairness = request.headers.get(FAIRNESS_HEADER) or DEFAULT_FAIRNESS_ID
        return (
            self._model(request.model),
            self._target(request.target_model),
            self._fairness(fairness),
            PRIORITY_OF[request.criticality],
        )

    def started(self, labels: Labels) -> None:
        self.running(*labels).inc()

    def ended(self, labels: Labels) -> None:
        self.running(*labels).dec()

    def finished(self, labels: Labels, facts: RequestFacts) -> None:
        """Count one request that is over (call `ended` too if it was `started`)."""
        self.total(*labels).inc()
        status = facts.status
        if status >= 400:
            self.errors(*labels, str(status)).inc()
        self.duration(*labels).observe(facts.duration_s)
        if facts.request_bytes is not None:
            self.request_size(*labels).observe(facts.request_bytes)
        if facts.response_bytes is not None:
            self.response_size(*labels).observe(facts.response_bytes)
        if facts.prompt_tokens is not None:
            self.input_tokens(*labels).observe(facts.prompt_tokens)
        if facts.cached_tokens is not None:
            self.cached_tokens(*labels).observe(facts.cached_tokens)
        ok = status < 400
        if ok and facts.ttft_s is not None:
            self.ttft(*labels, "true" if facts.streaming else "false").observe(facts.ttft_s)
        if facts.streaming and facts.chunk_gaps_s:
            observe = self.itl(*labels).observe
            for gap in facts.chunk_gaps_s:
                observe(gap)
        out = facts.completion_tokens
        if out is None:
            return
        self.output_tokens(*labels).observe(out)
        if ok and out > 0:
            self.ntpot(*labels).observe(facts.duration_s / out)
        if ok and facts.streaming and facts.ttft_s is not None and out > 1:
            self.tpot(*labels).observe(max(0.0, facts.duration_s - facts.ttft_s) / (out - 1))

    def refused(self, request: LLMRequest | None, status: int, duration_s: float) -> None:
        """A request the picker answered itself (bad body, no endpoint, shed) before any pod saw it."""
        labels = self.labels(request) if request is not None else ("", "", DEFAULT_FAIRNESS_ID, "0")
        self.finished(labels, RequestFacts(status, duration_s))

    # -- ext_proc streams (Envoy plane) ---------------------------------------------------------------
    def stream_started(self) -> None:
        self._streams_inflight.inc()

    def stream_finished(self, code: str, seconds: float) -> None:
        self._streams_inflight.dec()
        self._stream_duration.observe(seconds)
        self.streams(code).inc()
