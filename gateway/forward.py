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

import httpx

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
_RESPONSE_DROPPED = _HOP_BY_HOP | {"date", "server"}

# Failures that happen before the pod sent a byte of its response: safe to send the request elsewhere.
_RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.WriteTimeout,
)


class UpstreamAborted(Exception):
    """The pod broke off its response after it had started."""


class ForwardObserver(Protocol):
    """Told about pods that could not be reached and about retries (for metrics)."""

    def on_upstream_failure(self, endpoint: str, reason: str) -> None: ...

    def on_retry(self) -> None: ...


class UpstreamReply:
    """A pod's response: its status and headers, and its body chunks as they arrive (raw, not decoded)."""

    def __init__(self, response: httpx.Response, ctx: RequestContext, endpoint: Endpoint) -> None:
        self._response = response
        self._ctx = ctx
        self.status = response.status_code
        self.headers: Headers = [
            (k, v) for k, v in response.headers.raw if k.decode("latin-1").lower() not in _RESPONSE_DROPPED
        ]
        self.headers.append((ENDPOINT_HEADER, endpoint.name.encode()))

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                if chunk:
                    self._ctx.mark_first_byte()
                    yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamAborted(repr(exc)) from exc


class ForwardStage:
    """Send to the pod the schedule stage picked; retry once on the next-best pod if it cannot be reached."""

    name = "forward"

    def __init__(
        self,
        client: httpx.AsyncClient,
        datastore: Datastore,
        observer: ForwardObserver,
        max_attempts: int = 2,
    ) -> None:
        self._client = client
        self._datastore = datastore
        self._observer = observer
        self._max_attempts = max_attempts

    async def run(self, ctx: RequestContext) -> Reply | None:
        assert ctx.outcome is not None, "schedule runs first"
        endpoint: Endpoint | None = ctx.outcome.result.endpoint
        headers = {k: v for k, v in ctx.headers.items() if k not in _HOP_BY_HOP}
        while endpoint is not None:
            ctx.attempts += 1
            ctx.endpoint = endpoint
            name = endpoint.name
            request = self._client.build_request(
                "POST", f"{endpoint.base_url}{ctx.path}", content=ctx.upstream_body, headers=headers
            )
            self._datastore.acquire(name)
            try:
                response = await self._client.send(request, stream=True)
            except _RETRYABLE as exc:
                self._datastore.release(name)
                self._mark_failed(ctx, endpoint, exc)
                endpoint = self._next_best(ctx) if ctx.attempts < self._max_attempts else None
                if endpoint is not None:
                    self._observer.on_retry()
                continue
            except httpx.TimeoutException as exc:  # read or pool timeout: the pod may be working on it
                self._datastore.release(name)
                self._observer.on_upstream_failure(name, type(exc).__name__)
                ctx.result = OUTCOME_UPSTREAM_FAILED
                return BytesReply(
                    504, error_body(504, "The model server did not answer in time.", "timeout", "api_error")
                )
            except BaseException:
                self._datastore.release(name)
                raise

            async def finish(response: httpx.Response = response, name: str = name) -> None:
                try:
                    await response.aclose()
                finally:
                    self._datastore.release(name)

            ctx.cleanups.append(finish)
            return UpstreamReply(response, ctx, endpoint)
        ctx.result = OUTCOME_UPSTREAM_FAILED
        message = f"No model server could be reached ({ctx.attempts} tried)."
        return BytesReply(502, error_body(502, message, "upstream_unavailable", "api_error"))

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
