"""Envoy ext_proc gRPC server (`envoy.service.ext_proc.v3.ExternalProcessor`): picks the upstream endpoint.

One gRPC stream carries one HTTP request. epp answers every message Envoy sends (so any processing mode
works); it routes once, on the request body's last chunk (BUFFERED mode sends one; STREAMED chunks are
accumulated and each non-final chunk is answered with CONTINUE) or on request headers with end_of_stream
(a bodyless request such as GET /v1/models). Routing sets header `x-gateway-destination-endpoint` and the same
value in dynamic metadata `envoy.lb`, as GIE does. With `fallback_endpoints` N > 0 the value lists the pick
first, then up to N more pods chosen the way a retry is (scheduling again without the pick, over the
candidates before prefix affinity): Envoy's override_host load balancer retries on them when the pick fails.
Pick errors become an ImmediateResponse with an OpenAI-style JSON body.

Once it sent the routing (or error) answer, epp ends the gRPC stream (`end_after_route`, the default): Envoy
then carries on without ext_proc, so a picker that dies or restarts later cannot fail a request it already
routed (Envoy fails only streams still open: fail-closed answers 502 mid-request). The pick stays in flight
until Envoy's gRPC access log, served on the same port (epp/servers/outcomes.py), reports the request over:
the status and which pod answered. Until an access-log stream is connected (an Envoy configured without
one, or before its first flush), and always with `end_after_route=False`, the stream stays open for the
whole request and its end releases the in-flight count. When the pod that served is a fallback, the pick
failed (a gateway error for outlier detection) and the prefix index moves to the pod that served; an answer
of Envoy's own (no pod address) is a failure of the pick. If Envoy is configured to send response headers
instead (with `end_after_route=False`), their `:status` and `x-epp-endpoint` (the pod that answered; the
rendered route adds it) are used the same way. Request trailers are answered with CONTINUE and do not
trigger routing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf.internal import api_implementation  # type: ignore[import-untyped]

from epp.cache.front import Begun
from epp.cache.types import CACHE_HEADER
from epp.limits import DEFAULT_MAX_BODY_BYTES
from epp.metrics import EppMetrics
from epp.pod_auth import PodCredentials
from epp.request import RequestError
from epp.requestcontrol.director import Director
from epp.scheduling.types import SchedulingError
from epp.servers import extproc_cache as cache_msg
from epp.servers import extproc_messages as msg
from epp.servers.extproc_cache import ExtProcCache
from epp.servers.extproc_stream import ProcessStream
from epp.servers.extproc_traffic import TrafficProcessor, process_attempt, upstream_provider
from epp.servers.outcomes import AccessLogReceiver, OutcomeBook

logger = logging.getLogger(__name__)

_GRPC_HEADROOM = 1024 * 1024  # one ext_proc message is the body plus headers and framing


class SlowProtobufError(RuntimeError):
    """protobuf is running its pure-Python implementation, far too slow for the ext_proc hot path."""


def require_fast_protobuf() -> str:
    """Return the protobuf implementation name; raise SlowProtobufError if it is pure Python."""
    impl: str = api_implementation.Type()
    if impl == "python":
        raise SlowProtobufError(
            "protobuf uses its pure-Python implementation (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python?); "
            "the ext_proc server needs the upb C implementation: unset that variable or reinstall protobuf"
        )
    return impl


class ExtProcServicer:
    """Implements the ExternalProcessor `Process` bidirectional stream over the director."""

    def __init__(
        self,
        director: Director,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        fallback_endpoints: int = 0,
        book: OutcomeBook | None = None,
        pod_credentials: PodCredentials | None = None,
        end_after_route: bool = True,
        traffic: TrafficProcessor | None = None,
        cache: ExtProcCache | None = None,
    ) -> None:
        if fallback_endpoints < 0:
            raise ValueError(f"fallback_endpoints must be >= 0, got {fallback_endpoints}")
        requests = director.recorder.requests if isinstance(director.recorder, EppMetrics) else None
        self._stream_metrics = requests  # the llm-d ext_proc stream families (None: not an EppMetrics)
        self.book = book if book is not None else OutcomeBook(metrics=requests)
        self._director = director
        self._max_body_bytes = max_body_bytes
        self._fallback_endpoints = fallback_endpoints
        self._pod_credentials = pod_credentials  # routed requests get the pod key (extproc_messages)
        self._end_after_route = end_after_route
        self._traffic = traffic  # requests to route/provider hosts (extproc_traffic); None: pool only
        self._cache = cache  # the response cache stage (extproc_cache); None: no cache
        self._route_answers = msg.RouteAnswers()

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """One HTTP request's messages from Envoy; answers each in order (and counts the stream)."""
        metrics = self._stream_metrics
        if metrics is None:
            await self._process(request_iterator, context)
            return
        metrics.stream_started()
        started, code = time.perf_counter(), "OK"
        try:
            await self._process(request_iterator, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        finally:
            metrics.stream_finished(code, time.perf_counter() - started)

    async def _process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        provider = upstream_provider(context)
        if provider is not None:
            await process_attempt(self._traffic, provider, request_iterator, context)
            return
        stream = ProcessStream(self.book)
        # The finally below ends the stream on every way out (return, error, Envoy resetting the stream:
        # cancellation). No `context.add_done_callback` as well: grpc keeps the callback bound to the context
        # in the RPC's state, a cycle that leaves every stream's objects to the garbage collector.
        try:
            async for request in request_iterator:
                if stream.cache_selected and not stream.routed and request.HasField("request_body"):
                    response: pb.ProcessingResponse | None = await self._on_cached_body(
                        stream, request.request_body
                    )
                else:
                    response = self._handle(stream, request)
                if response is not None:
                    await context.write(response)
                if (
                    stream.routed
                    and self._end_after_route
                    and self.book.hears_outcomes
                    and not stream.observes_response
                ):
                    # Returning closes the stream with OK: Envoy skips ext_proc for the rest of the request.
                    # The book holds the pick in flight until its access-log entry (or its TTL); with no
                    # access log connected the stream stays open and its end releases the pick.
                    if stream.lifecycle is not None:
                        self.book.handed_over(stream.lifecycle)
                        stream.lifecycle = None
                    return
        finally:
            stream.end()

    def _handle(self, stream: ProcessStream, request: pb.ProcessingRequest) -> pb.ProcessingResponse | None:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return self._on_request_headers(stream, request.request_headers)
        if kind == "request_body":
            return self._on_request_body(stream, request.request_body)
        if kind == "response_headers":
            if stream.cache is not None:
                cache_msg.response_started(stream.cache, request.response_headers)
            self._on_response_headers(stream, request.response_headers)
            return msg.continue_response_headers()
        if kind == "response_body":
            body = request.response_body
            if stream.cache is not None:
                cache_msg.response_body(stream.cache, body)
            if body.end_of_stream or body.end_of_stream_without_message:
                stream.end()
            return msg.continue_response_body()
        if kind == "request_trailers":
            return msg.continue_request_trailers()
        if kind == "response_trailers":
            stream.end()
            return msg.continue_response_trailers()
        return None

    def _on_request_headers(
        self, stream: ProcessStream, http_headers: pb.HttpHeaders
    ) -> pb.ProcessingResponse:
        headers = stream.headers
        for hv in http_headers.headers.headers:
            headers[hv.key.lower()] = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
        stream.path = headers.get(":path", "")
        if http_headers.end_of_stream and not stream.routed:
            return self._route(stream, b"", on_headers=True)
        if self._cache is not None:
            stream.cache_selected, answer = self._cache.on_request_headers(headers)
            return answer
        return msg.continue_request_headers()

    def _on_request_body(self, stream: ProcessStream, body: pb.HttpBody) -> pb.ProcessingResponse:
        if stream.routed:
            return msg.continue_request_body()
        data = self._collect_body(stream, body)
        if isinstance(data, pb.ProcessingResponse):
            return data
        return self._route(stream, data, on_headers=False)

    async def _on_cached_body(self, stream: ProcessStream, body: pb.HttpBody) -> pb.ProcessingResponse:
        """The request body of a request the cache selected: a hit is answered, anything else routed."""
        data = self._collect_body(stream, body)
        if isinstance(data, pb.ProcessingResponse):
            return data
        assert self._cache is not None
        try:
            stream.cache = begun = await self._cache.on_request_body(stream.headers, stream.path, data)
        except RequestError as exc:
            stream.routed = True
            return _error(exc)
        if begun.hit is not None:
            stream.routed = True
            return cache_msg.hit_response(begun)
        return self._route(stream, data if begun.body is None else begun.body, False, begun)

    def _collect_body(self, stream: ProcessStream, body: pb.HttpBody) -> bytes | pb.ProcessingResponse:
        """The whole body once its last chunk came; until then CONTINUE (or a 413 past the limit)."""
        chunk = body.body
        if chunk:
            stream.chunks.append(chunk)
            stream.size += len(chunk)
        if stream.size > self._max_body_bytes:
            stream.routed = True
            stream.chunks.clear()
            return _error(
                RequestError(
                    413, f"Request body exceeds {self._max_body_bytes} bytes.", code="body_too_large"
                )
            )
        if not (body.end_of_stream or body.end_of_stream_without_message):
            return msg.continue_request_body()
        data = stream.chunks[0] if len(stream.chunks) == 1 else b"".join(stream.chunks)
        stream.chunks.clear()
        return data

    def _on_response_headers(self, stream: ProcessStream, http_headers: pb.HttpHeaders) -> None:
        """The answer Envoy relays: its status, and which pod sent it (a fallback when the pick failed)."""
        lifecycle = stream.lifecycle
        if lifecycle is None:
            return
        status = 0
        served = ""
        for hv in http_headers.headers.headers:
            key = hv.key
            if key == ":status":
                status = int(hv.raw_value or hv.value or 0)
            elif key == msg.SERVED_BY_HEADER:
                served = (hv.raw_value.decode() if hv.raw_value else hv.value).strip()
        # Without the header (Envoy's own answer, or an Envoy whose route does not add it) the pick is taken
        # to have answered: Envoy's 503/504 then count as its gateway errors.
        lifecycle.answered(status, served)
        if http_headers.end_of_stream:
            stream.end()

    def _route(
        self, stream: ProcessStream, body: bytes, on_headers: bool, cache: Begun | None = None
    ) -> pb.ProcessingResponse:
        stream.routed = True
        pool_route = False
        # The cache's status for the rendered route to copy onto the response, and the body without the
        # `cache` object (when it had one).
        extra = () if cache is None else ((CACHE_HEADER, cache.status),)
        stripped = None if cache is None else cache.body
        if self._traffic is not None and self._traffic.owns(stream.headers):
            try:
                choice = self._traffic.choose(stream.headers, body)
            except RequestError as exc:
                return _error(exc)
            provider = choice.target.provider
            if provider is not None:
                return msg.choose_provider(provider.host, choice.rule, stripped, extra)
            pool_route = True  # an LLMRoute backendRef naming the local pool: the picker's path
        try:
            lifecycle = self._director.begin(body, stream.headers, stream.path)
        except (RequestError, SchedulingError) as exc:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("pick refused request_id=%s: %r", stream.headers.get("x-request-id"), exc)
            return _error(exc)
        except Exception as exc:
            logger.exception("pick failed unexpectedly for request_id=%s", stream.headers.get("x-request-id"))
            return _error(exc)
        stream.lifecycle = lifecycle
        self.book.routed(lifecycle)
        fallbacks = lifecycle.fallbacks(self._fallback_endpoints)
        lifecycle.send()
        destination = ",".join([lifecycle.endpoint.address, *(e.address for e in fallbacks)])
        if on_headers:
            return msg.route_on_headers(destination, self._pod_credentials)
        new_body = lifecycle.rewritten_body if lifecycle.rewritten_body is not None else stripped
        if new_body is None:
            return self._route_answers.on_body(destination, self._pod_credentials, pool_route, extra)
        return msg.route_on_body(destination, new_body, self._pod_credentials, pool_route, extra)


_error = msg.error_answer


class ExtProcServer:
    """The ext_proc gRPC server on `host:port` (port 0 picks a free port)."""

    def __init__(
        self,
        director: Director,
        host: str = "127.0.0.1",
        port: int = 9002,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        fallback_endpoints: int = 0,
        pod_credentials: PodCredentials | None = None,
        end_after_route: bool = True,
        traffic: TrafficProcessor | None = None,
        cache: ExtProcCache | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._max_message_bytes = max_body_bytes + _GRPC_HEADROOM
        self._servicer = ExtProcServicer(
            director,
            max_body_bytes,
            fallback_endpoints,
            pod_credentials=pod_credentials,
            end_after_route=end_after_route,
            traffic=traffic,
            cache=cache,
        )
        self.outcomes = self._servicer.book  # what Envoy's access log says of routed requests
        self._access_log = AccessLogReceiver(self.outcomes)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port. Raises SlowProtobufError without a C protobuf backend."""
        impl = require_fast_protobuf()
        # gRPC's default 4 MiB cap would refuse a body below max_body_bytes (Envoy: 502, or no pick).
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", self._max_message_bytes)])
        pb_grpc.add_ExternalProcessorServicer_to_server(self._servicer, server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self._access_log, server)
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        bound: int = server.add_insecure_port(f"{host}:{self.port}")
        if bound == 0:
            raise OSError(f"ext_proc server could not bind {self.host}:{self.port}")
        await server.start()
        self._server = server
        self.port = bound
        logger.info("ext_proc server listening on %s:%d (protobuf %s)", self.host, bound, impl)
        return bound

    async def stop(self, grace: float | None = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
