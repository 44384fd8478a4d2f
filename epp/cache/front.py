"""The cache stage's logic, shared by both data planes: answer a hit before scheduling, record a miss.

`CacheFront.begin()` takes a request (authority, path, headers, body) and says what to do with it:
- not selected (host/path regexes do not match): nothing, the request goes on as if no cache existed;
- `bypass`: selected but not cacheable (no-store, n > 1, sampled, ...): goes on, marked `x-epp-cache: bypass`;
- a hit: the answer to send (one JSON answer, or SSE events for a streaming request);
- a miss: goes on with an `AnswerRecorder` that the plane feeds the response with; a complete, storable
  answer is stored when it ends (errors, `length` finishes, aborted answers never are).
Concurrent identical misses are single-flight: the first goes upstream, the others wait for its answer (up
to the flight timeout, then go upstream themselves). A cache outage costs at most `lookup_timeout_s`: with
fail-open the request is treated as a miss (and counted as an error), fail-closed answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from epp.cache import replay
from epp.cache.answers import StreamAssembler, storable_reason
from epp.cache.metrics import CacheMetrics
from epp.cache.policy import Bypass, CachePolicy, decide, without_cache_field
from epp.cache.policy import include_usage as policy_include_usage
from epp.cache.singleflight import SingleFlight
from epp.cache.types import (
    BYPASS,
    CACHE_HEADER,
    HIT_EXACT,
    HIT_SEMANTIC,
    MISS,
    SIMILARITY_HEADER,
    CacheHit,
    CacheQuery,
    CacheUnavailable,
    ResponseCache,
    StoredAnswer,
)
from epp.request import RequestError

logger = logging.getLogger(__name__)

SSE = b"text/event-stream"
JSON = b"application/json"
MAX_RECORDED_BYTES = 1 << 20  # the default of CachePolicy.max_entry_bytes


@dataclass(frozen=True, slots=True)
class FrontOptions:
    fail_open: bool = True  # a cache outage is a miss (FAIL_OPEN); False: 503
    lookup_timeout_s: float = 0.05  # the most an outage may add to a request
    flight_wait_s: float = 30.0  # how long identical requests wait for the first one's answer


@dataclass(slots=True)
class Hit:
    """A cached answer, ready to send."""

    status: int
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]  # one JSON body, or the SSE events


@dataclass(slots=True)
class Begun:
    """What the stage decided for one request."""

    status: str  # x-epp-cache: hit-exact | hit-semantic | miss | bypass
    body: bytes | None = None  # the body to forward when it changed (the `cache` object removed)
    hit: Hit | None = None
    recorder: AnswerRecorder | None = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers to add to a forwarded request's answer."""
        return [(CACHE_HEADER.encode(), self.status.encode())]


class CacheFront:
    """The cache stage over one ResponseCache; every dependency is passed in."""

    def __init__(
        self,
        cache: ResponseCache,
        selects: Callable[[str, str], bool],
        policy: CachePolicy,
        metrics: CacheMetrics,
        options: FrontOptions = FrontOptions(),
    ) -> None:
        self.cache = cache
        self._selects = selects
        self._policy = policy
        self._metrics = metrics
        self._options = options
        self._flight = SingleFlight()
        self._stores: set[asyncio.Task[None]] = set()

    def selects(self, authority: str, path: str) -> bool:
        """Whether the cache sees a request to `authority` (Host, port optional) and `path`."""
        return self._selects(authority, path)

    async def begin(self, path: str, headers: Mapping[str, str], body: bytes) -> Begun:
        """Decide for a selected request; raises RequestError for a bad `cache` object (400) or, fail-closed,
        an outage (503)."""
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._bypass("not-json")  # the parser after the stage answers the 400
        if not isinstance(parsed, dict):
            return self._bypass("not-json")
        stripped = without_cache_field(parsed)  # from the parse above: the body is not parsed twice
        decision = decide(path, headers, parsed, self._policy)
        if isinstance(decision, Bypass):
            begun = self._bypass(decision.reason)
            begun.body = stripped
            return begun
        query = decision
        stream = parsed.get("stream") is True
        include_usage = stream and policy_include_usage(parsed)
        if query.lookup:
            hit = await self._lookup(query)
            if hit is not None:
                return self._answer(hit, stream, include_usage)
            waited = self._flight.join(query.key)
            if waited is not None:
                hit = await self._wait_for_leader(waited)
                if hit is not None:
                    return self._answer(hit, stream, include_usage)
                waited = None
        leads = query.lookup and self._flight.lead(query.key)
        self._metrics.request(MISS)
        recorder = AnswerRecorder(self, query, stream, leads, self._policy.max_entry_bytes)
        return Begun(MISS, stripped, recorder=recorder)

    def _bypass(self, reason: str) -> Begun:
        self._metrics.request(BYPASS)
        self._metrics.bypassed(reason)
        return Begun(BYPASS)

    async def _lookup(self, query: CacheQuery) -> CacheHit | None:
        try:
            async with asyncio.timeout(self._options.lookup_timeout_s):
                return await self.cache.lookup(query)
        except (CacheUnavailable, TimeoutError) as exc:
            self._metrics.error("lookup")
            if not self._options.fail_open:
                raise RequestError(
                    503, "The response cache is unavailable.", code="cache_unavailable", type_="api_error"
                ) from exc
            logger.warning("cache lookup failed (fail-open: treated as a miss): %s", _why(exc))
            return None

    async def _wait_for_leader(self, waited: asyncio.Future[CacheHit | None]) -> CacheHit | None:
        try:
            async with asyncio.timeout(self._options.flight_wait_s):
                return await asyncio.shield(waited)
        except TimeoutError:
            return None

    def _answer(self, hit: CacheHit, stream: bool, include_usage: bool) -> Begun:
        status = HIT_EXACT if hit.tier == "exact" else HIT_SEMANTIC
        self._metrics.request(status)
        self._metrics.time_saved(hit.answer.upstream_s)
        headers = [(CACHE_HEADER.encode(), status.encode())]
        if hit.similarity is not None:
            headers.append((SIMILARITY_HEADER.encode(), f"{hit.similarity:.4f}".encode()))
        if stream:
            chunks = replay.replay_sse(hit.answer, hit, include_usage)
            headers += [(b"content-type", SSE), (b"cache-control", b"no-cache")]
        else:
            chunks = [replay.replay_json(hit.answer, hit)]
            headers.append((b"content-type", JSON))
        return Begun(status, hit=Hit(200, headers, chunks))

    def _store_later(self, query: CacheQuery, answer: StoredAnswer) -> None:
        self.in_background(self._store(query, answer))

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` without anyone waiting for it; close() lets it finish (briefly) or cancels it."""
        task = asyncio.get_running_loop().create_task(work)
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _store(self, query: CacheQuery, answer: StoredAnswer) -> None:
        try:
            async with asyncio.timeout(max(1.0, self._options.lookup_timeout_s * 20)):
                await self.cache.store(query, answer)
            self._metrics.stored("stored", len(answer.body))
        except (CacheUnavailable, TimeoutError) as exc:
            self._metrics.error("store")
            logger.warning("cache store failed: %s", _why(exc))
        except Exception:
            self._metrics.error("store")
            logger.exception("cache store failed unexpectedly")

    async def close(self) -> None:
        """Let pending stores finish (briefly), then close the cache."""
        if self._stores:
            pending = list(self._stores)
            _, late = await asyncio.wait(pending, timeout=2.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.cache.close()


@dataclass(slots=True)
class AnswerRecorder:
    """A miss's answer as it passes: kept when it is complete and storable (never delays a chunk)."""

    front: CacheFront
    query: CacheQuery
    stream: bool
    leads: bool  # this request leads a single flight: finish() must release the waiters
    max_bytes: int = MAX_RECORDED_BYTES  # a longer answer is not kept (nor buffered to be kept)
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    _parts: list[bytes] = field(default_factory=list)
    _size: int = 0
    _assembler: StreamAssembler | None = None
    _refused: str = ""  # why the answer will not be kept
    _done: bool = False

    def response_started(self, status: int, content_type: str, content_encoding: str = "") -> None:
        self.status = status
        if status != 200:
            self._refused = f"status_{status // 100}xx"
        elif content_encoding and content_encoding.lower() != "identity":
            self._refused = "encoded"
        elif content_type.startswith("text/event-stream"):
            self._assembler = StreamAssembler(self.query.kind, self.max_bytes)

    def feed(self, chunk: bytes) -> None:
        if self._refused or not chunk:
            return
        if self._assembler is not None:
            self._assembler.feed(chunk)
            return
        self._size += len(chunk)
        if self._size > self.max_bytes:
            self._refused, self._parts = "too_large", []
        else:
            self._parts.append(chunk)

    def finish(self, complete: bool) -> None:
        """The answer ended (`complete`: the whole body was relayed); store it if it may be replayed."""
        if self._done:
            return
        self._done = True
        front, answer, hit = self.front, None, None
        reason = self._refused or ("" if complete else "aborted")
        if not reason and self.query.store:
            assembler = self._assembler
            body = assembler.result() if assembler is not None else b"".join(self._parts)
            if body is None:
                reason = (assembler.failed if assembler is not None else None) or "incomplete_stream"
            else:
                reason = storable_reason(body, self.query.kind, self.max_bytes) or ""
            if body is not None and not reason:
                answer = StoredAnswer(
                    body, self.query.model, time.time(), time.monotonic() - self.started, self.query.text
                )
        elif not reason:
            reason = "no_store"
        if answer is not None:
            front._store_later(self.query, answer)
            hit = CacheHit(answer, "exact", self.query.key)
        else:
            front._metrics.stored("skipped", 0, reason)
        if self.leads:
            front._flight.finish(self.query.key, hit)
        self._parts = []

    def abandon(self) -> None:
        """The request ended without an answer worth keeping (client gone, pod failed)."""
        self._refused = self._refused or "aborted"
        self.finish(False)


def _why(exc: BaseException) -> str:
    return "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
