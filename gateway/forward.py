"""The forward stage: send the request to the picked pod and hand its response back unbuffered.

The pod counts as in flight on the datastore from the send until the reply ends (however it ends). A pod that
refuses the connection or fails before sending any response byte is marked failed in the datastore (it is
not picked again until its next good metrics scrape) and the request goes once more, to the next-best
candidate of the same scheduling decision. A pod that answers, even with an error status, is never retried:
its status and body go to the client as they are.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp

from epp.datastore import Datastore, Endpoint
from gateway.asgi import Headers, error_body
from gateway.context import OUTCOME_UPSTREAM_FAILED, BytesReply, Reply, RequestContext

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


class UpstreamAborted(Exception):
    """The pod broke off its response after it had started."""


class ForwardObserver(Protocol):
    """Told about pods that could not be reached and about retries (for metrics)."""

    def on_upstream_failure(self, endpoint: str, reason: str) -> None: ...

    def on_retry(self) -> None: ...


class UpstreamPool:
    """The keep-alive connections to the pods (aiohttp: its connection pool stays cheap with many
    connections, where httpx's re-checks every pooled connection on each request).

    `open()` inside the running event loop before the first request; `close()` at shutdown.
    """

    def __init__(
        self, connect_timeout_s: float, read_timeout_s: float, max_connections: int, keepalive_s: float = 4.0
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=read_timeout_s, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._max_connections = max_connections
        # Below uvicorn's 5 s idle timeout (vLLM, the simulator): a connection the pod is closing just as a
        # request goes out would otherwise fail that request's first attempt and mark a healthy pod failed.
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamPool.open() first"
        return self._session

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_s
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


class UpstreamReply:
    """A pod's response: its status and headers, and its body chunks as they arrive (raw, not decoded)."""

    def __init__(self, response: aiohttp.ClientResponse, ctx: RequestContext, endpoint: Endpoint) -> None:
        self._response = response
        self._ctx = ctx
        self.status = response.status
        self.headers: Headers = [
            (k, v) for k, v in response.raw_headers if k.lower() not in _RESPONSE_DROPPED
        ]
        self.headers.append((ENDPOINT_HEADER, endpoint.name.encode()))

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                if chunk:
                    self._ctx.mark_first_byte()
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamAborted(repr(exc)) from exc


class ForwardStage:
    """Send to the pod the schedule stage picked; retry once on the next-best pod if it cannot be reached."""

    name = "forward"

    def __init__(
        self,
        pool: UpstreamPool,
        datastore: Datastore,
        observer: ForwardObserver,
        max_attempts: int = 2,
    ) -> None:
        self._pool = pool
        self._datastore = datastore
        self._observer = observer
        self._max_attempts = max_attempts

    async def run(self, ctx: RequestContext) -> Reply | None:
        assert ctx.outcome is not None, "schedule runs first"
        endpoint: Endpoint | None = ctx.outcome.result.endpoint
        headers = {k: v for k, v in ctx.headers.items() if k not in _HOP_BY_HOP}
        session = self._pool.session
        while endpoint is not None:
            ctx.attempts += 1
            ctx.endpoint = endpoint
            name = endpoint.name
            self._datastore.acquire(name)
            try:
                response = await session.request(
                    "POST",
                    f"{endpoint.base_url}{ctx.path}",
                    data=ctx.upstream_body,
                    headers=headers,
                    allow_redirects=False,
                )
            except aiohttp.ServerTimeoutError as exc:
                self._datastore.release(name)
                if isinstance(exc, aiohttp.ConnectionTimeoutError):  # never connected: try elsewhere
                    endpoint = self._failed_before_answer(ctx, endpoint, exc)
                    continue
                # No answer in time after the request went out: the pod may be working on it.
                self._observer.on_upstream_failure(name, type(exc).__name__)
                ctx.result = OUTCOME_UPSTREAM_FAILED
                return BytesReply(
                    504, error_body(504, "The model server did not answer in time.", "timeout", "api_error")
                )
            except aiohttp.ClientError as exc:  # refused, reset or closed before any response byte
                self._datastore.release(name)
                endpoint = self._failed_before_answer(ctx, endpoint, exc)
                continue
            except BaseException:
                self._datastore.release(name)
                raise

            async def finish(response: aiohttp.ClientResponse = response, name: str = name) -> None:
                try:
                    if response.content.is_eof():
                        response.release()  # the whole body was read: the connection is reused
                    else:
                        response.close()  # cut short: the connection cannot carry another request
                finally:
                    self._datastore.release(name)

            ctx.cleanups.append(finish)
            return UpstreamReply(response, ctx, endpoint)
        ctx.result = OUTCOME_UPSTREAM_FAILED
        message = f"No model server could be reached ({ctx.attempts} tried)."
        return BytesReply(502, error_body(502, message, "upstream_unavailable", "api_error"))

    def _failed_before_answer(
        self, ctx: RequestContext, endpoint: Endpoint, exc: Exception
    ) -> Endpoint | None:
        """Mark `endpoint` failed; the next pod to try, if any attempts are left."""
        self._mark_failed(ctx, endpoint, exc)
        following = self._next_best(ctx) if ctx.attempts < self._max_attempts else None
        if following is not None:
            self._observer.on_retry()
        return following

    def _mark_failed(self, ctx: RequestContext, endpoint: Endpoint, exc: Exception) -> None:
        reason = type(exc).__name__
        logger.warning(
            "request_id=%s: %s failed before answering (%s); marked unschedulable until its next good scrape",
            ctx.request_id,
            endpoint.name,
            reason,
        )
        ctx.failed.append(endpoint.name)
        # The scrape-failure mark is the datastore's "do not pick" flag; the next good scrape clears it.
        self._datastore.record_scrape_failure(endpoint.name, f"proxy: {reason}")
        self._observer.on_upstream_failure(endpoint.name, reason)

    def _next_best(self, ctx: RequestContext) -> Endpoint | None:
        """The schedulable candidate with the highest total score that has not failed this request."""
        assert ctx.outcome is not None
        result = ctx.outcome.result
        totals = result.total_scores
        remaining = [n for n in result.candidates_after_filters if n not in ctx.failed]
        for name in sorted(remaining, key=lambda n: -totals.get(n, 0.0)):  # stable: ties keep filter order
            state = self._datastore.get(name)
            if state is not None and self._datastore.is_schedulable(state):
                return state.endpoint
        return None
