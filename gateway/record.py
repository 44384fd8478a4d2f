"""The record step: once a request is over, count it in the metrics and write one access log line.

`watch(ctx)` (called when the request arrives) wraps the final reply to measure what the client got: bytes,
the gaps between chunks, the answer's `usage` and `model`. `record(ctx, total_s)` then feeds the gateway's
route counts, the picker's `llm_d_epp_request_*` families (requests the pool served or refused) and the
OpenTelemetry `gen_ai_*` families (pool and provider requests alike).

The access log never includes headers or bodies (they may carry API keys or private prompts).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable

import orjson

from epp.otel_metrics import POOL_PROVIDER, GenAIFacts, operation_of
from epp.request_metrics import Labels, RequestFacts, RequestMetrics, TokenCounts, take_task_usage
from gateway.asgi import Headers
from gateway.context import OUTCOME_CLIENT_GONE, OUTCOME_OK, Reply, RequestContext
from gateway.metrics import GatewayMetrics
from gateway.response_watch import ResponseWatcher, Usage
from gateway.traffic_metrics import TrafficMetrics

access_logger = logging.getLogger("gateway.access")

_PLAIN = re.compile(r"[A-Za-z0-9._:/@+-]{1,256}")
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
MODEL_SCAN_BYTES = 8192  # the answer's `model` is looked for in its first bytes only

CLIENT_CLOSED = 499  # status recorded when the client left before any answer (nginx's convention)

# gen_ai.provider.name well-known values by provider host suffix; another host names itself
_PROVIDER_OF_HOST = (
    (".openai.azure.com", "azure.ai.openai"),
    ("openai.com", "openai"),
    ("anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("mistral.ai", "mistral_ai"),
    ("groq.com", "groq"),
    ("deepseek.com", "deepseek"),
    ("cohere.com", "cohere"),
    ("cohere.ai", "cohere"),
    ("x.ai", "x_ai"),
    ("perplexity.ai", "perplexity"),
)


def provider_name(host: str) -> str:
    for suffix, name in _PROVIDER_OF_HOST:
        if host == suffix.lstrip(".") or host.endswith("." + suffix.lstrip(".")):
            return name
    return host


class ReplyStats:
    """What the client was sent, measured by MeteredReply."""

    __slots__ = ("_last", "bytes", "gaps", "model", "picker_labels", "usage", "watcher")

    def __init__(self) -> None:
        self.bytes = 0
        self.gaps: list[float] = []  # between consecutive chunks after the first
        self.model = ""  # the answer's `model`
        self.usage: Usage | None = None
        self.watcher: ResponseWatcher | None = None
        self.picker_labels: Labels | None = None  # counted in llm_d_epp_request_running under these
        self._last: float | None = None

    def chunk(self, data: bytes, now: float) -> None:
        if self._last is not None:
            self.gaps.append(now - self._last)
        self._last = now
        if not self.model and self.bytes < MODEL_SCAN_BYTES:
            found = _MODEL.search(data)
            if found is not None:
                self.model = found.group(1).decode("utf-8", "replace")
        self.bytes += len(data)
        if self.watcher is not None:
            self.watcher.feed(data)


class MeteredReply:
    """The final reply, measured as it goes out."""

    def __init__(
        self,
        inner: Reply,
        stats: ReplyStats,
        clock: Callable[[], float],
        on_done: Callable[[float], None] | None = None,
    ) -> None:
        self._inner = inner
        self._stats = stats
        self._clock = clock
        self._on_done = on_done  # given the time spent handing the chunks on, summed
        self.status = inner.status
        self.headers: Headers = inner.headers
        content_type = next((v for k, v in inner.headers if k.lower() == b"content-type"), b"")
        stats.watcher = ResponseWatcher(content_type.decode("latin-1"))

    @property
    def last_chunk(self) -> bool:
        return self._inner.last_chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        stats, clock = self._stats, self._clock
        handling = 0.0
        try:
            async for chunk in self._inner.chunks():
                start = clock()
                stats.chunk(chunk, start)
                yield chunk
                handling += clock() - start
        finally:
            if self._on_done is not None:
                self._on_done(handling)


class RequestRecorder:
    """Records finished requests for one strategy. `requests`: the picker's per-request families (None:
    not recorded, a gateway without a pool)."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        strategy: str,
        traffic: TrafficMetrics | None = None,
        requests: RequestMetrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._metrics = metrics
        self._strategy = strategy
        self._traffic = traffic
        self._requests = requests if requests is not None else metrics.picker
        self._clock = clock
        self._stats: dict[int, ReplyStats] = {}  # by id(ctx), from watch() to record()

    def watch(self, ctx: RequestContext) -> None:
        """Measure the reply `ctx` will get (register before the pipeline runs, so it wraps outermost)."""
        stats = self._stats[id(ctx)] = ReplyStats()

        def hook(reply: Reply) -> Reply:
            requests = self._requests
            lifecycle = ctx.lifecycle
            if requests is not None and lifecycle is not None and stats.picker_labels is None:
                stats.picker_labels = requests.labels(lifecycle.request)
                requests.started(stats.picker_labels)
            done = requests.response_processing_series.observe if requests is not None else None
            return MeteredReply(reply, stats, self._clock, done)

        ctx.reply_hooks.insert(0, hook)

    def record(self, ctx: RequestContext, total_s: float) -> None:
        status = ctx.status if ctx.status is not None else CLIENT_CLOSED
        stats = self._stats.pop(id(ctx), None)
        lifecycle = ctx.lifecycle
        pod = lifecycle.endpoint.name if lifecycle is not None and lifecycle.attempts else ""
        ttft = lifecycle.first_token_s if lifecycle is not None else None
        provider = ctx.provider
        route, rule, attempts = "-", "-", lifecycle.attempts if lifecycle is not None else 0
        if provider is not None:  # config names only (route, rule, provider host): safe to log and label
            pod, ttft, attempts = provider.endpoint.name, provider.first_token_s, provider.attempts
            route, rule = provider.route, provider.choice.rule or "-"
            if self._traffic is not None:
                self._traffic.request_count(route, rule, pod, str(status)).inc()
        result = ctx.final_result(status)
        self._metrics.request_count(ctx.path, str(status), pod, result).inc()
        ok = 200 <= status < 300 and ctx.result != OUTCOME_CLIENT_GONE
        usage = _usage_of(stats, take_task_usage())
        if ctx.parsed is not None or provider is not None:
            if provider is None:
                self._record_picker(ctx, status, total_s, ttft if ok else None, stats, usage)
            self._record_genai(ctx, status, total_s, ttft if ok else None, stats, usage)
        if stats is not None and stats.picker_labels is not None and self._requests is not None:
            self._requests.ended(stats.picker_labels)  # counted running since its reply began
        if not access_logger.isEnabledFor(logging.INFO):
            return
        ratio = lifecycle.result.prefix_match_ratio if lifecycle is not None else None
        access_logger.info(
            "request_id=%s route=%s model=%s stream=%s status=%d result=%s endpoint=%s attempts=%d "
            "strategy=%s prefix_match_ratio=%s ttft_ms=%s total_ms=%.1f llm_route=%s rule=%s provider=%s "
            "cache=%s",
            ctx.request_id,
            ctx.path,
            _loggable(ctx.parsed.request.model) if ctx.parsed is not None else "-",
            ctx.stream,
            status,
            result,
            pod or "-",
            attempts,
            self._strategy,
            "-" if ratio is None else f"{ratio:.3f}",
            "-" if ttft is None else f"{ttft * 1000:.1f}",
            total_s * 1000,
            route,
            rule,
            pod if provider is not None else "-",
            ctx.cache_status,
        )

    def _record_picker(
        self,
        ctx: RequestContext,
        status: int,
        total_s: float,
        ttft: float | None,
        stats: ReplyStats | None,
        usage: Usage | None,
    ) -> None:
        requests = self._requests
        if requests is None or ctx.parsed is None:
            return
        labels = stats.picker_labels if stats is not None else None
        if labels is None:
            labels = requests.labels(ctx.parsed.request)
        facts = RequestFacts(
            status,
            total_s,
            streaming=ctx.stream,
            ttft_s=ttft,
            request_bytes=len(ctx.body),
            response_bytes=stats.bytes if stats is not None else None,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else None,
            cached_tokens=usage.cached_prompt_tokens if usage is not None else None,
            chunk_gaps_s=stats.gaps if stats is not None else (),
        )
        requests.finished(labels, facts)

    def _record_genai(
        self,
        ctx: RequestContext,
        status: int,
        total_s: float,
        ttft: float | None,
        stats: ReplyStats | None,
        usage: Usage | None,
    ) -> None:
        provider, lifecycle = ctx.provider, ctx.lifecycle
        if provider is not None:
            host = provider.endpoint.name
            name, address, port = provider_name(host), host, str(provider.choice.port)
        elif lifecycle is not None and lifecycle.attempts:
            endpoint = lifecycle.endpoint
            name, address, port = POOL_PROVIDER, endpoint.host, str(endpoint.port)
        else:
            name, address, port = POOL_PROVIDER, "", ""
        if 200 <= status < 400 and ctx.result == OUTCOME_OK:
            error = ""
        else:
            error = str(status) if status >= 400 else ctx.result
        self._metrics.genai.record(
            GenAIFacts(
                operation_of(ctx.path),
                name,
                ctx.parsed.request.model if ctx.parsed is not None else _model_of(ctx.body),
                stats.model if stats is not None else "",
                address,
                port,
                total_s,
                error_type=error,
                ttft_s=ttft,
                input_tokens=usage.prompt_tokens if usage is not None else None,
                output_tokens=usage.completion_tokens if usage is not None else None,
            )
        )


def _usage_of(stats: ReplyStats | None, reported: TokenCounts | None) -> Usage | None:
    """The usage the upstream reported to the attempt (before any stripping), else what the reply showed
    (read only then: the attempt has usually parsed the answer already)."""
    if reported is not None:
        return Usage(reported.prompt, reported.completion, reported.cached)
    if stats is None:
        return None
    if stats.usage is None and stats.watcher is not None:
        stats.usage = stats.watcher.usage()
    return stats.usage


def _model_of(body: bytes) -> str:
    """The `model` a provider request's body names ("" when it names none)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else ""


def _loggable(text: str) -> str:
    """`text` as is when plain, else JSON-quoted (control characters escaped): a client's model name must not
    forge fields or lines in the access log (the request id is sanitised where it is read)."""
    return text if _PLAIN.fullmatch(text) else orjson.dumps(text[:256]).decode()
