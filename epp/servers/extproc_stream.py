"""What one ext_proc stream (one HTTP request) has seen so far, and how it ends (epp.servers.extproc)."""

from __future__ import annotations

from epp.cache.front import Begun
from epp.requestcontrol.lifecycle import RequestLifecycle
from epp.servers.outcomes import OutcomeBook


class ProcessStream:
    """What one ext_proc stream (one HTTP request) has seen so far."""

    __slots__ = (
        "book",
        "cache",
        "cache_selected",
        "chunks",
        "headers",
        "lifecycle",
        "path",
        "routed",
        "size",
    )

    def __init__(self, book: OutcomeBook) -> None:
        self.book = book
        self.headers: dict[str, str] = {}
        self.path = ""
        self.chunks: list[bytes] = []
        self.size = 0
        self.routed = False  # a routing or error answer was sent; later request messages just continue
        self.lifecycle: RequestLifecycle | None = None  # set once routed to a pod
        self.cache_selected = False  # the response cache selected this request (extproc_cache)
        self.cache: Begun | None = None  # what the cache decided for it

    @property
    def observes_response(self) -> bool:
        """A cache miss: its answer comes through this stream to be recorded."""
        return self.cache is not None and self.cache.recorder is not None

    def end(self) -> None:
        """The HTTP stream is over: with the response headers seen, the answer completed; otherwise its
        outcome comes from Envoy's access log (OutcomeBook)."""
        if self.cache is not None and self.cache.recorder is not None:
            self.cache.recorder.abandon()  # a no-op once the answer was recorded
        lifecycle, self.lifecycle = self.lifecycle, None
        if lifecycle is None or not lifecycle.in_attempt:
            return
        if lifecycle.responded:
            lifecycle.complete()
        else:
            self.book.stream_ended(lifecycle)
