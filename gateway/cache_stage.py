"""The gateway's cache stage (epp.cache.front): first in the pipeline, before providers and scheduling.

A hit is answered here; a miss goes on with its `cache` object removed from the body and a reply hook that
tees the answer into an AnswerRecorder as it is relayed (no chunk waits for the cache) and adds
`x-epp-cache: miss`. The upstream is asked for an unencoded answer, since only plain text can be stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from epp.cache.front import AnswerRecorder, Begun, CacheFront
from gateway.asgi import Headers
from gateway.context import OUTCOME_OK, BytesReply, Reply, RequestContext


class CacheStage:
    name = "cache"

    def __init__(self, front: CacheFront) -> None:
        self._front = front

    async def run(self, ctx: RequestContext) -> Reply | None:
        if not ctx.body or not self._front.selects(ctx.headers.get("host", ""), ctx.path):
            return None
        begun = await self._front.begin(ctx.path, ctx.headers, ctx.body)
        ctx.cache_status = begun.status
        if begun.hit is not None:
            ctx.result = OUTCOME_OK
            return HitReply(begun)
        if begun.body is not None:
            ctx.body = begun.body
        recorder = begun.recorder
        if recorder is not None:
            ctx.headers["accept-encoding"] = "identity"
            # A no-op once finished: covers a request that never got a reply.
            ctx.cleanups.append(recorder.abandon)
        extra = begun.headers
        ctx.reply_hooks.append(lambda reply: TeeReply(reply, extra, recorder))
        return None


class HitReply:
    """A cached answer: one JSON body or the replayed SSE events."""

    def __init__(self, begun: Begun) -> None:
        assert begun.hit is not None
        self.status = begun.hit.status
        self.headers: Headers = list(begun.hit.headers)
        self._chunks = begun.hit.chunks

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    @property
    def last_chunk(self) -> bool:
        return False


class TeeReply:
    """The forwarded answer with the cache header added, fed to the recorder as it passes."""

    def __init__(self, inner: Reply, extra: Headers, recorder: AnswerRecorder | None) -> None:
        self._inner = inner
        self.status = inner.status
        self.headers: Headers = [*inner.headers, *extra]
        self._recorder = recorder
        if recorder is not None:
            found = {k.lower(): v for k, v in inner.headers}
            recorder.response_started(
                inner.status,
                found.get(b"content-type", b"").decode("latin-1"),
                found.get(b"content-encoding", b"").decode("latin-1"),
            )

    @property
    def last_chunk(self) -> bool:
        return self._inner.last_chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        recorder = self._recorder
        if recorder is None or isinstance(self._inner, BytesReply):  # the gateway's own answers: errors
            async for chunk in self._inner.chunks():
                yield chunk
            if recorder is not None:
                recorder.abandon()
            return
        complete = False
        try:
            async for chunk in self._inner.chunks():
                recorder.feed(chunk)
                yield chunk
            complete = True
        finally:
            recorder.finish(complete)
