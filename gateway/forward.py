"""The forward stage: send the request to the picked pod and hand its response back unbuffered.

Every attempt goes through the request's lifecycle (epp.requestcontrol), which keeps in-flight counts, the
prefix index and outlier detection on the pod that really serves. Nothing is sent to the client before the
pod's first body byte, so an attempt that fails before it (refused or reset connection, no first byte within
the first-byte timeout, or a 5xx answer) is retried on another pod chosen by scheduling again without the
pods that failed. After the first byte the answer is relayed as it comes; a pod that then goes silent for the
chunk timeout or breaks off ends an SSE stream with an error event (a JSON answer is cut short).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from epp.pod_auth import PodCredentials, headers_for_pod
from epp.requestcontrol import lifecycle as lc
from epp.requestcontrol.lifecycle import RequestLifecycle
from gateway.asgi import Headers, error_body
from gateway.context import (
    OUTCOME_UPSTREAM_ABORTED,
    OUTCOME_UPSTREAM_FAILED,
    BytesReply,
    Reply,
    RequestContext,
)
from gateway.response_watch import ResponseWatcher

logger = logging.getLogger(__name__)

ENDPOINT_HEADER = b"x-epp-endpoint"  # response header naming the pod that answered

# Hop-by-hop headers (RFC 9110 7.6.1) and ones the HTTP client or server sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_RESPONSE_DROPPED = frozenset(name.encode() for name in _HOP_BY_HOP | {"date", "server"})


MAX_ERROR_BODY_BYTES = 64 * 1024  # a pod's 5xx body kept to relay if no other pod can serve


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Attempts(Protocol):
    """What the forward loop reports each attempt to: a pod's RequestLifecycle, or a provider's attempts
    (gateway/provider_attempts.py). `endpoint` is the current attempt's upstream; `retry` moves it on."""

    @property
    def endpoint(self) -> Named: ...

    @property
    def attempts(self) -> int: ...

    def send(self) -> Named: ...

    def response_started(self, status: int) -> None: ...

    def first_token(self) -> float: ...

    def complete(
        self,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cached_prompt_tokens: int | None = None,
    ) -> None: ...

    def fail(self, error: str, status: int | None = None) -> None: ...

    def retry(self, reason: str) -> Named | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One attempt's upstream request (built after `Attempts.send()`, for the attempt's upstream)."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    ssl: ssl.SSLContext | bool = True  # aiohttp's `ssl=`: True is its default verified context
    server_hostname: str | None = None  # TLS SNI and certificate name, when not the URL's host


ChunkFilter = Callable[[bytes], bytes]  # rewrites relayed body chunks (e.g. drops a usage event)


class UpstreamAborted(Exception):
    """The pod broke off its (non-SSE) response after it had started."""


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Per attempt: reaching the pod, its first body byte, and the longest silence after that."""

    connect_s: float = 2.0
    first_byte_s: float = 300.0  # a non-streamed answer's first byte comes when it is complete
    chunk_s: float = 60.0


class UpstreamPool:
    """The keep-alive connections to the pods (aiohttp: its connection pool stays cheap with many
    connections, where httpx's re-checks every pooled connection on each request).

    `open()` inside the running event loop before the first request; `close()` at shutdown.
    """

    def __init__(
        self,
        timeouts: UpstreamTimeouts,
        max_connections: int,
        keepalive_s: float = 4.0,
        resolver: AbstractResolver | None = None,  # providers: epp.traffic.resolve.OverrideResolver
    ) -> None:
        # aiohttp's per-read socket timer (re-armed as bytes arrive) enforces the first-byte timeout; the
        # forward stage shortens it to the chunk timeout once the first byte is in. One timer per connection
        # costs far less than a timeout context around every read.
        self.timeouts = timeouts
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_s, sock_read=timeouts.first_byte_s
        )
        self._max_connections = max_connections
        # Below uvicorn's 5 s idle timeout (vLLM, the simulator): a connection the pod is closing just as a
        # request goes out would otherwise fail that request's first attempt and mark a healthy pod failed.
        self._keepalive_s = keepalive_s
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamPool.open() first"
        return self._session

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_s,
                resolver=self._resolver,
            )
            # A proxy: no cookies kept between clients, bodies relayed as the pod encoded them, no proxy
            # settings from the environment, and no default headers beyond what the client sent.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _arm_chunk_timeout(response: aiohttp.ClientResponse, chunk_s: float) -> None:
    """From now on the pod may stay silent at most `chunk_s` between two reads of this response."""
    connection = response.connection
    if connection is None or connection.protocol is None or response.content.is_eof():
        return  # all read: no timer on a connection going back to the pool
    connection.protocol.read_timeout = chunk_s
    connection.protocol.start_timeout()


def _relayed_headers(response: aiohttp.ClientResponse, pod: str) -> Headers:
    headers = [(k, v) for k, v in response.raw_headers if k.lower() not in _RESPONSE_DROPPED]
    headers.append((ENDPOINT_HEADER, pod.encode()))
    return headers


class UpstreamReply:
    """An upstream response: status and headers, then its body chunks as they arrive (raw, not decoded)."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        first: bytes,
        ctx: RequestContext,
        attempts: Attempts,
        chunk_filter: ChunkFilter | None = None,
    ) -> None:
        self._ctx = ctx
        self._response = response
        self._first = first
        self._attempts = attempts
        self._filter = chunk_filter
        self.status = response.status
        self.headers: Headers = _relayed_headers(response, attempts.endpoint.name)
        self._watcher = ResponseWatcher(response.headers.get("content-type", ""))

    async def chunks(self) -> AsyncIterator[bytes]:
        attempts, watcher, content, keep = self._attempts, self._watcher, self._response.content, self._filter
        chunk = self._first
        try:
            while chunk:
                first_content = watcher.feed(chunk)
                out = chunk if keep is None else keep(chunk)
                if out:
                    yield out
                if first_content:  # after the send: this is when the client has its first token
                    attempts.first_token()
                if content.at_eof():  # all read: no wait
                    break
                chunk = await content.readany()
        except aiohttp.ServerTimeoutError:
            error = lc.CHUNK_TIMEOUT
        except aiohttp.ClientError:
            error = lc.ABORTED
        else:
            usage = watcher.usage()
            if usage is None:
                attempts.complete()
            else:
                attempts.complete(usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens)
            return
        name = attempts.endpoint.name
        attempts.fail(error)
        self._ctx.result = OUTCOME_UPSTREAM_ABORTED
        if not watcher.is_sse:
            raise UpstreamAborted(error)
        yield _sse_error(error, name)


def _sse_error(error: str, pod: str) -> bytes:
    message = (
        f"The model server {pod} stopped answering mid-stream."
        if error == lc.CHUNK_TIMEOUT
        else f"The model server {pod} broke off the stream."
    )
    event = {"error": {"message": message, "type": "api_error", "param": None, "code": f"upstream_{error}"}}
    return b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"


class ForwardStage:
    """Send to the picked pod; on a failure before the first byte, retry where scheduling says."""

    name = "forward"

    def __init__(self, pool: UpstreamPool, pod_credentials: PodCredentials | None = None) -> None:
        self._pool = pool
        self._pod_credentials = pod_credentials  # None: the client's credentials pass through

    async def run(self, ctx: RequestContext) -> Reply | None:
        lifecycle = ctx.lifecycle
        assert lifecycle is not None, "schedule runs first"
        ctx.cleanups.append(_close_lifecycle(lifecycle))
        headers = headers_for_pod(self._pod_credentials, forwardable_headers(ctx.headers))
        body = ctx.upstream_body

        def outgoing() -> Outgoing:
            return Outgoing(f"{lifecycle.endpoint.base_url}{ctx.path}", headers, body)

        return await forward(ctx, lifecycle, self._pool.session, self._pool.timeouts.chunk_s, outgoing)


def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers without hop-by-hop ones (and Host: the upstream's own is set)."""
    return {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}


async def forward(
    ctx: RequestContext,
    attempts: Attempts,
    session: aiohttp.ClientSession,
    chunk_s: float,
    outgoing: Callable[[], Outgoing],
    chunk_filter: ChunkFilter | None = None,
) -> Reply:
    """Send `outgoing()` for each attempt; on a failure before the first byte, retry where `attempts` says.

    The reply relays the upstream's answer as it comes (after `chunk_filter`); when no attempt is left, the
    last 5xx answer is relayed, or a 502/504 JSON error given.
    """
    while True:
        upstream = attempts.send()
        request = outgoing()
        response: aiohttp.ClientResponse | None = None
        try:
            response = await session.request(
                "POST",
                request.url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
                ssl=request.ssl,
                server_hostname=request.server_hostname,
            )
            attempts.response_started(response.status)
            first = await response.content.readany()
            _arm_chunk_timeout(response, chunk_s)
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError):  # it never saw the request
            last_error = lc.CONNECT_FAILED
        except aiohttp.ServerTimeoutError:
            last_error = lc.FIRST_BYTE_TIMEOUT
        except aiohttp.ClientError:
            last_error = lc.RESET
        except BaseException:
            if response is not None:
                response.close()
            raise
        else:
            if response.status < 500:
                ctx.cleanups.append(_finish_response(response))
                return UpstreamReply(response, first, ctx, attempts, chunk_filter)
            reply = await _upstream_error(response, first, attempts)
            if attempts.retry(lc.HTTP_5XX) is None:
                return reply
            _log_retry(ctx, upstream.name, f"HTTP {response.status}", attempts)
            continue
        if response is not None:
            response.close()
        attempts.fail(last_error)
        if attempts.retry(last_error) is not None:
            _log_retry(ctx, upstream.name, last_error, attempts)
            continue
        logger.warning(
            "request_id=%s: %s failed before answering (%s); no upstream left to try",
            ctx.request_id,
            upstream.name,
            last_error,
        )
        ctx.result = OUTCOME_UPSTREAM_FAILED
        return _failure_reply(last_error, attempts.attempts)


async def _upstream_error(response: aiohttp.ClientResponse, first: bytes, attempts: Attempts) -> BytesReply:
    """Read a 5xx answer (bounded) and end the attempt as failed; the reply if no retry follows."""
    parts = [first]
    size = len(first)
    try:
        while size < MAX_ERROR_BODY_BYTES:
            chunk = await response.content.readany()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    except aiohttp.ClientError:
        pass
    finally:
        response.close()
    name = attempts.endpoint.name
    attempts.fail(lc.HTTP_5XX, response.status)
    return BytesReply(response.status, b"".join(parts), _relayed_headers(response, name))


def _log_retry(ctx: RequestContext, failed: str, why: str, attempts: Attempts) -> None:
    logger.warning(
        "request_id=%s: %s failed before answering (%s); retrying on %s",
        ctx.request_id,
        failed,
        why,
        attempts.endpoint.name,
    )


def _failure_reply(error: str, attempts: int) -> BytesReply:
    if error == lc.FIRST_BYTE_TIMEOUT:
        message = f"The model server did not answer in time ({attempts} tried)."
        return BytesReply(504, error_body(504, message, "timeout", "api_error"))
    message = f"No model server could be reached ({attempts} tried)."
    return BytesReply(502, error_body(502, message, "upstream_unavailable", "api_error"))


def _close_lifecycle(lifecycle: RequestLifecycle) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        lifecycle.close()  # an attempt still open when the reply ends: the client left

    return close


def _finish_response(response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def finish() -> None:
        if response.content.is_eof():
            response.release()  # the whole body was read: the connection is reused
        else:
            response.close()  # cut short: the connection cannot carry another request

    return finish
