"""Prometheus exposition of one simulated pod, with vLLM 0.32's metric names, types and label keys.

Gauges and counters are read from the engine at scrape time by a custom collector; latency and size
histograms are prometheus_client Histograms observed as tokens are produced. All times are simulated seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bench.sim.engine import EngineCore, SimRequest, TokenOutput
from bench.sim.metric_shapes import (
    BASE_LABELS,
    FINISH_REASONS,
    ITL_BUCKETS,
    LATENCY_BUCKETS,
    TTFT_BUCKETS,
    cache_config_labels,
    one_two_five_buckets,
)


@dataclass
class PromptSources:
    """Prompt-token counters kept beside the engine's: cached tokens of each request's first prefill."""

    cached: int = 0


def _lora_deferred(engine: EngineCore) -> int:
    """Waiting requests held back by the LoRA budget: their adapter is not in a batch already at max_loras."""
    active = {r.lora for r in engine.running if r.lora}
    if len(active) < engine.max_loras:
        return 0
    return sum(1 for r in engine.waiting if r.lora is not None and r.lora not in active)


class _EngineCollector(Collector):
    """Reads gauges, counters and info metrics from the engine at scrape time.

    Counters carry `_created` samples (the registry's creation time), as vLLM's prometheus_client does.
    """

    def __init__(
        self, engine: EngineCore, model_name: str, sources: PromptSources, start_time: float
    ) -> None:
        self._engine = engine
        self._labels = ["0", model_name]
        self._sources = sources
        self._created = start_time

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=BASE_LABELS)
        family.add_metric(self._labels, value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=BASE_LABELS)
        family.add_metric(self._labels, value, created=self._created)
        return family

    def _by(
        self, family: CounterMetricFamily | GaugeMetricFamily, values: dict[str, float]
    ) -> CounterMetricFamily | GaugeMetricFamily:
        """One sample per value of the extra label (the third label key)."""
        for key, value in values.items():
            if isinstance(family, CounterMetricFamily):
                family.add_metric([*self._labels, key], value, created=self._created)
            else:
                family.add_metric([*self._labels, key], value)
        return family

    def collect(self) -> Iterable[Metric]:
        e = self._engine
        s = e.stats
        start = GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the process since unix epoch in seconds."
        )
        start.add_metric([], self._created)
        yield start
        yield self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", len(e.running)
        )
        yield self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", len(e.waiting)
        )
        deferred = _lora_deferred(e)
        yield self._by(
            GaugeMetricFamily(
                "vllm:num_requests_waiting_by_reason",
                "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling "
                "capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked "
                "status). Sum of all reasons equals vllm:num_requests_waiting.",
                labels=(*BASE_LABELS, "reason"),
            ),
            {"capacity": len(e.waiting) - deferred, "deferred": deferred},
        )
        yield self._by(
            GaugeMetricFamily(
                "vllm:engine_sleep_state",
                "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
                "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
                labels=(*BASE_LABELS, "sleep_state"),
            ),
            {"awake": 1, "weights_offloaded": 0, "discard_all": 0},
        )
        yield self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.pool.usage()
        )
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            s.prefix_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", s.prefix_hits
        )
        # No KV connector: the external (connector) prefix cache is never queried, as in a plain vLLM pod.
        yield self._counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, "
            "in terms of number of queried tokens.",
            0,
        )
        yield self._counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, "
            "in terms of number of cached tokens.",
            0,
        )
        yield self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", s.preemptions
        )
        yield self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens)
        cached = self._sources.cached
        yield self._by(
            CounterMetricFamily(
                "vllm:prompt_tokens_by_source",
                "Number of prompt tokens by source.",
                labels=(*BASE_LABELS, "source"),
            ),
            {
                "local_compute": s.prompt_tokens - cached,
                "local_cache_hit": cached,
                "external_kv_transfer": 0,
            },
        )
        yield self._counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).", cached
        )
        yield self._by(
            CounterMetricFamily(
                "vllm:prompt_tokens_cached_by_source",
                "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host "
                "(offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
                "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
                "vllm:external_prefix_cache_hits.",
                labels=(*BASE_LABELS, "source"),
            ),
            {"device": s.prefix_hits, "host": 0, "p2p": 0, "disk": 0, "external_unspecified": 0},
        )
        yield self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=("engine", "finished_reason", "model_name"),
        )
        for reason in FINISH_REASONS:
            success.add_metric(
                [self._labels[0], reason, self._labels[1]], s.finished.get(reason, 0), created=self._created
            )
        yield success
        labels = {"engine": "0", **cache_config_labels(e)}
        keys = sorted(labels)
        config = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=keys
        )
        config.add_metric([labels[k] for k in keys], 1.0)
        yield config


class PodMetrics:
    """The CollectorRegistry of one pod and the histograms fed from engine outputs.

    `max_loras` None means LoRA is off (no `--enable-lora`): vllm:lora_requests_info is then not exposed.
    With LoRA on, the family is there from the start but has no sample until the first engine step; every
    step sets the series of its (running, waiting) adapter lists to the current time, so each combination
    seen stays as its own series valued at the last time it was current, as vLLM 0.32 does.
    """

    def __init__(self, engine: EngineCore, model_name: str, max_loras: int | None, start_time: float) -> None:
        self.registry = CollectorRegistry()
        self._engine = engine
        self.sources = PromptSources()
        self.registry.register(_EngineCollector(engine, model_name, self.sources, start_time))
        sizes = one_two_five_buckets(engine.profile.max_model_len)
        self._max_loras = max_loras
        self.lora_info = (
            None
            if max_loras is None
            else Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ("max_lora", "running_lora_adapters", "waiting_lora_adapters"),
                registry=self.registry,
            )
        )

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            h = Histogram(name, doc, BASE_LABELS, registry=self.registry, buckets=buckets)
            return h.labels("0", model_name)

        self.ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = hist(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        )
        self.queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            LATENCY_BUCKETS,
        )
        # Per-request phases, observed when the request finishes, as vLLM does: prefill is from the first
        # schedule to the first token (queueing excluded), decode from the first token to the last.
        self.inference = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            LATENCY_BUCKETS,
        )
        self.prefill = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            LATENCY_BUCKETS,
        )
        self.decode = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            LATENCY_BUCKETS,
        )
        self.prompt_tokens = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", sizes)
        self.generation_tokens = hist(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", sizes
        )

    def observe(self, outputs: Iterator[TokenOutput] | list[TokenOutput]) -> None:
        """Record one engine step: latencies of the tokens it produced and the LoRA state after it."""
        for out in outputs:
            req = out.request
            if out.first:
                self.sources.cached += req.num_cached_tokens
            if out.first and req.first_token_at is not None:
                self.ttft.observe(req.first_token_at - req.arrival)
                if req.first_scheduled is not None:
                    self.queue.observe(req.first_scheduled - req.arrival)
            elif not out.first:
                self.itl.observe(req.last_itl)
            if out.finished and req.finished_at is not None:
                self.e2e.observe(req.finished_at - req.arrival)
                self._observe_phases(req)
                self.prompt_tokens.observe(req.num_prompt)
                self.generation_tokens.observe(req.num_output)

        if self.lora_info is not None:
            e = self._engine
            running, waiting = ",".join(e.running_loras()), ",".join(e.waiting_loras())
            self.lora_info.labels(str(self._max_loras), running, waiting).set(time.time())

    def _observe_phases(self, req: SimRequest) -> None:
        scheduled, first, last = req.first_scheduled, req.first_token_at, req.last_token_at
        if scheduled is None or first is None or last is None:
            return
        self.inference.observe(last - scheduled)
        self.prefill.observe(first - scheduled)
        self.decode.observe(last - first)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
