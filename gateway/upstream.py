"""The upstream side of a proxied request: the connection pool and its timeouts, and the response relayed
back chunk by chunk, reporting to the request's attempts (a pod's lifecycle or a provider's).

aiohttp's per-read socket timer (re-armed as bytes arrive) enforces the first-byte timeout, shortened to the
chunk timeout once the first byte is in. A pod that goes silent or breaks off after that ends an SSE stream
with an error event (a JSON answer is cut short: UpstreamAborted).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from epp.requestcontrol import lifecycle as lc
from gateway.asgi import Headers
from gateway.context import OUTCOME_UPSTREAM_ABORTED, RequestContext
from gateway.response_watch import ResponseWatcher

ENDPOINT_HEADER = b"x-epp-endpoint"  # response header naming the pod that answered

# Hop-by-hop headers (RFC 9110 7.6.1) and ones the HTTP client or server sets itself.
HOP_BY_HOP = frozenset(
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
_RESPONSE_DROPPED = frozenset(name.encode() for name in HOP_BY_HOP | {"date", "server"})


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


def arm_chunk_timeout(response: aiohttp.ClientResponse, chunk_s: float) -> None:
    """From now on the pod may stay silent at most `chunk_s` between two reads of this response."""
    connection = response.connection
    if connection is None or connection.protocol is None or response.content.is_eof():
        return  # all read: no timer on a connection going back to the pool
    connection.protocol.read_timeout = chunk_s
    connection.protocol.start_timeout()


def relayed_headers(response: aiohttp.ClientResponse, pod: str) -> Headers:
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
        self.headers: Headers = relayed_headers(response, attempts.endpoint.name)
        self._watcher = ResponseWatcher(response.headers.get("content-type", ""))
        self.last_chunk = False

    async def chunks(self) -> AsyncIterator[bytes]:
        attempts, watcher, content, keep = self._attempts, self._watcher, self._response.content, self._filter
        chunk = self._first
        try:
            while chunk:
                first_content = watcher.feed(chunk)
                out = chunk if keep is None else keep(chunk)
                if out:
                    self.last_chunk = content.at_eof()  # all read: the relay ends the response with it
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
