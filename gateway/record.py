"""The record step: once a request is over, count it in the metrics and write one access log line.

The access log never includes headers or bodies (they may carry API keys or private prompts).
"""

from __future__ import annotations

import logging
import re

import orjson

from gateway.context import OUTCOME_CLIENT_GONE, RequestContext
from gateway.metrics import GatewayMetrics
from gateway.traffic_metrics import TrafficMetrics

access_logger = logging.getLogger("gateway.access")

_PLAIN = re.compile(r"[A-Za-z0-9._:/@+-]{1,256}")

CLIENT_CLOSED = 499  # status recorded when the client left before any answer (nginx's convention)


class RequestRecorder:
    """Records finished requests for one strategy."""

    def __init__(self, metrics: GatewayMetrics, strategy: str, traffic: TrafficMetrics | None = None) -> None:
        self._metrics = metrics
        self._strategy = strategy
        self._traffic = traffic

    def record(self, ctx: RequestContext, total_s: float) -> None:
        status = ctx.status if ctx.status is not None else CLIENT_CLOSED
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
                self._traffic.duration_of(route, pod).observe(total_s)
        result = ctx.final_result(status)
        m = self._metrics
        m.request_count(ctx.path, str(status), pod, result).inc()
        m.duration_of(ctx.path, self._strategy).observe(total_s)
        ok = 200 <= status < 300 and ctx.result != OUTCOME_CLIENT_GONE
        if ok and ttft is not None:
            m.ttft_of(ctx.path, self._strategy).observe(ttft)
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


def _loggable(text: str) -> str:
    """`text` as is when plain, else JSON-quoted (control characters escaped): a client's model name must not
    forge fields or lines in the access log (the request id is sanitised where it is read)."""
    return text if _PLAIN.fullmatch(text) else orjson.dumps(text[:256]).decode()
