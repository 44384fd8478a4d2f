"""Relay a Reply to the client chunk by chunk, as the chunks arrive (SSE events are never held back)."""

from __future__ import annotations

import logging

from gateway.asgi import Send
from gateway.context import OUTCOME_UPSTREAM_ABORTED, Reply, RequestContext
from gateway.upstream import UpstreamAborted

logger = logging.getLogger(__name__)


async def relay(reply: Reply, send: Send, ctx: RequestContext) -> None:
    """Send `reply`; if the pod breaks off mid-body, end without completing the response.

    The ASGI server then closes the connection, so the client sees a truncated response rather than a
    complete-looking one.
    """
    ctx.status = reply.status
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    ended = False
    try:
        async for chunk in reply.chunks():
            if ended:  # the reply broke its word: the response is complete, so what follows cannot go out
                logger.error("request_id=%s: a chunk after the last one was dropped", ctx.request_id)
                continue
            ended = reply.last_chunk
            await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
    except UpstreamAborted as exc:
        logger.warning("request_id=%s: %s broke off its response: %s", ctx.request_id, _pod(ctx), exc)
        ctx.result = OUTCOME_UPSTREAM_ABORTED
        return
    if not ended:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _pod(ctx: RequestContext) -> str:
    return ctx.endpoint.name if ctx.endpoint is not None else "the pod"
