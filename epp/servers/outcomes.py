"""Outcomes of requests routed over ext_proc, learnt from Envoy's gRPC access log after they are over.

The ext_proc stream tells epp when a request ends but not how (its response is not sent to epp: a third
message per request cost more CPU than the whole decision). Envoy's access log says it, batched many entries
to a message: the status, which pod served (a fallback when the pick failed) and whether Envoy answered
itself. `OutcomeBook` holds each routed request's lifecycle by request id until its entry arrives
(`AccessLogReceiver`), then resolves it; one whose entry never comes (no access log configured) is
abandoned after `ttl_s`, recording nothing.

When epp ends the ext_proc stream right after routing (`handed_over`, so a picker restart cannot fail the
request), the entry is also what ends the request's in-flight count: the pod counts it until the entry
arrives, or, should Envoy drop the entry (its access-log buffer overflowed, the log stream was down),
until `in_flight_ttl_s` passes.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from epp.request_metrics import Labels, RequestFacts, RequestMetrics
from epp.requestcontrol.lifecycle import RequestLifecycle

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0
CLIENT_CLOSED = 499  # the status counted for a request whose client left first (Envoy logs 0)
DEFAULT_IN_FLIGHT_TTL_S = 900.0  # a handed-over request still counts in flight without its entry for this


class OutcomeBook:
    """Lifecycles waiting for their access-log entry, by request id. Not thread-safe (one event loop)."""

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        in_flight_ttl_s: float = DEFAULT_IN_FLIGHT_TTL_S,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self._ttl_s = ttl_s
        self._metrics = metrics  # the picker's llm_d_epp_request_* families, fed from the entries
        self._labels: dict[str, Labels] = {}  # by request id: counted running under these until it is over
        self._in_flight_ttl_s = in_flight_ttl_s
        self._clock = clock
        self._active: dict[str, RequestLifecycle] = {}  # routed, stream still open
        self._ended: OrderedDict[str, tuple[float, RequestLifecycle]] = OrderedDict()  # stream over
        # routed, stream closed by epp, request still going on in Envoy: in flight until its entry
        self._handed: OrderedDict[str, tuple[float, RequestLifecycle]] = OrderedDict()
        self.access_log_streams = 0  # Envoy's access-log streams open now

    @property
    def hears_outcomes(self) -> bool:
        """An access log is connected: a request handed over to Envoy will have its outcome (and release).
        Without one (an Envoy not configured for it, or before its first flush) the ext_proc stream must stay
        open, its end being the only sign that the request is over."""
        return self.access_log_streams > 0

    def __len__(self) -> int:
        return len(self._active) + len(self._ended) + len(self._handed)

    def routed(self, lifecycle: RequestLifecycle) -> None:
        self._active[lifecycle.request_id] = lifecycle
        metrics = self._metrics
        if metrics is not None and lifecycle.request_id not in self._labels:
            labels = self._labels[lifecycle.request_id] = metrics.labels(lifecycle.request)
            metrics.started(labels)

    def stream_ended(self, lifecycle: RequestLifecycle) -> None:
        """The ext_proc stream closed: no longer in flight; the outcome may still come."""
        rid = lifecycle.request_id
        if self._active.get(rid) is lifecycle:
            del self._active[rid]
        if not lifecycle.in_attempt:  # resolved already (the entry came first, or response headers did)
            return
        lifecycle.release()
        now = self._clock()
        self._ended[rid] = (now, lifecycle)
        self._expire(now)

    def handed_over(self, lifecycle: RequestLifecycle) -> None:
        """epp closed the ext_proc stream after routing; the request goes on in Envoy and stays in flight
        until its access-log entry (at most `in_flight_ttl_s`)."""
        rid = lifecycle.request_id
        if self._active.get(rid) is lifecycle:
            del self._active[rid]
        if not lifecycle.in_attempt:
            return
        now = self._clock()
        self._handed[rid] = (now, lifecycle)
        self._expire(now)

    def resolve(self, request_id: str, status: int, upstream: str, entry: EntryFacts | None = None) -> bool:
        """Apply one access-log entry; False when no routed request has that id."""
        found = self._handed.pop(request_id, None) or self._ended.pop(request_id, None)
        lifecycle = found[1] if found is not None else self._active.pop(request_id, None)
        if lifecycle is None:
            return False
        lifecycle.resolve(status, upstream)
        labels = self._labels.pop(request_id, None)
        if labels is not None and self._metrics is not None:
            self._metrics.ended(labels)
            self._metrics.finished(labels, _facts(lifecycle, status, entry))
        return True

    def _expire(self, now: float) -> None:
        for book, ttl in ((self._ended, self._ttl_s), (self._handed, self._in_flight_ttl_s)):
            while book:
                rid, (at, lifecycle) = next(iter(book.items()))
                if now - at < ttl:
                    break
                del book[rid]
                lifecycle.abandon()  # also ends a handed-over request's in-flight count
                labels = self._labels.pop(rid, None)
                if labels is not None and self._metrics is not None:
                    self._metrics.ended(labels)  # no entry came: how it ended is unknown, not counted


@dataclass(frozen=True, slots=True)
class EntryFacts:
    """What an access-log entry says beyond status and pod (None: the entry has no such field)."""

    duration_s: float | None = None  # start to the last byte sent downstream
    ttft_s: float | None = None  # start to the first byte from the pod
    request_bytes: int | None = None
    response_bytes: int | None = None


def _facts(lifecycle: RequestLifecycle, status: int, entry: EntryFacts | None) -> RequestFacts:
    entry = entry if entry is not None else EntryFacts()
    duration = entry.duration_s if entry.duration_s is not None else time.perf_counter() - lifecycle.arrived
    return RequestFacts(
        status if status else CLIENT_CLOSED,
        max(0.0, duration),
        streaming=lifecycle.request.body.get("stream") is True,
        ttft_s=entry.ttft_s,
        request_bytes=entry.request_bytes,
        response_bytes=entry.response_bytes,
    )


def entry_facts(entry: Any) -> EntryFacts:
    """The timings and sizes of one `HTTPAccessLogEntry`."""
    common, request, response = entry.common_properties, entry.request, entry.response

    def seconds(field: str) -> float | None:
        return _seconds(getattr(common, field)) if common.HasField(field) else None

    return EntryFacts(
        duration_s=seconds("time_to_last_downstream_tx_byte"),
        ttft_s=seconds("time_to_first_upstream_rx_byte"),
        request_bytes=int(request.request_body_bytes),
        response_bytes=int(response.response_body_bytes),
    )


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """`envoy.service.accesslog.v3.AccessLogService`: the HTTP entries of Envoy's gRPC access logger."""

    def __init__(self, book: OutcomeBook) -> None:
        self._book = book

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> als_pb2.StreamAccessLogsResponse:
        book = self._book
        resolve = book.resolve
        book.access_log_streams += 1
        try:
            async for message in request_iterator:
                for entry in message.http_logs.log_entry:
                    try:
                        address = entry.common_properties.upstream_remote_address.socket_address
                        upstream = f"{address.address}:{address.port_value}" if address.address else ""
                        code = entry.response.response_code.value
                        resolve(entry.request.request_id, code, upstream, entry_facts(entry))
                    except Exception:  # one bad entry must not end the stream (and lose the next ones)
                        logger.exception("access-log entry could not be applied")
        finally:
            book.access_log_streams -= 1
        return als_pb2.StreamAccessLogsResponse()
