"""The forward stage: send the request to the picked pod and hand its response back unbuffered.

Every attempt goes through the request's lifecycle (epp.requestcontrol), which keeps in-flight counts, the
prefix index and outlier detection on the pod that really serves. Nothing is sent to the client before the
pod's first body byte, so an attempt that fails before it (refused or reset connection, no first byte within
the first-byte timeout, or a 5xx answer) is retried on another pod chosen by scheduling again without the
pods that failed. After the first byte the answer is relayed as it comes; a pod that then goes silent for the
chunk timeout or breaks off ends an SSE stream with an error event (a JSON answer is cut short).
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from epp.pod_auth import PodCredentials, headers_for_pod
from epp.requestcontrol import lifecycle as lc
from gateway.asgi import error_body
from gateway.context import (
    OUTCOME_UPSTREAM_FAILED,
    BytesReply,
    Reply,
    RequestContext,
)
from gateway.upstream import (
    HOP_BY_HOP,
    Attempts,
    ChunkFilter,
    UpstreamPool,
    UpstreamReply,
    arm_chunk_timeout,
    relayed_headers,
)

logger = logging.getLogger(__name__)

MAX_ERROR_BODY_BYTES = 64 * 1024  # a pod's 5xx body kept to relay if no other pod can serve


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One attempt's upstream request (built after `Attempts.send()`, for the attempt's upstream)."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    ssl: ssl.SSLContext | bool = True  # aiohttp's `ssl=`: True is its default verified context
    server_hostname: str | None = None  # TLS SNI and certificate name, when not the URL's host


class ForwardStage:
    """Send to the picked pod; on a failure before the first byte, retry where scheduling says."""

    name = "forward"

    def __init__(self, pool: UpstreamPool, pod_credentials: PodCredentials | None = None) -> None:
        self._pool = pool
        self._pod_credentials = pod_credentials  # None: the client's credentials pass through

    async def run(self, ctx: RequestContext) -> Reply | None:
        lifecycle = ctx.lifecycle
        assert lifecycle is not None, "schedule runs first"
        ctx.cleanups.append(lifecycle.close)  # an attempt still open when the reply ends: the client left
        headers = headers_for_pod(self._pod_credentials, forwardable_headers(ctx.headers))
        body = ctx.upstream_body

        def outgoing() -> Outgoing:
            return Outgoing(f"{lifecycle.endpoint.base_url}{ctx.path}", headers, body)

        return await forward(ctx, lifecycle, self._pool.session, self._pool.timeouts.chunk_s, outgoing)


def forwardable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers without hop-by-hop ones (and Host: the upstream's own is set)."""
    return {k: v for k, v in headers.items() if k not in HOP_BY_HOP}


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
            arm_chunk_timeout(response, chunk_s)
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
                ctx.cleanups.append(functools.partial(_finish_response, response))
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
    return BytesReply(response.status, b"".join(parts), relayed_headers(response, name))


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


def _finish_response(response: aiohttp.ClientResponse) -> None:
    if response.content.is_eof():
        response.release()  # the whole body was read: the connection is reused
    else:
        response.close()  # cut short: the connection cannot carry another request
