"""Concurrent identical misses: the first goes upstream, the others wait for its answer.

    waited = flights.join(key)           # the running flight's future, or None when none runs
    if waited is not None:
        hit = await flights.wait(waited, timeout_s)   # None: the leader produced nothing (or too late)
    ...
    if flights.lead(key):                # start a flight; False when another request leads one already
        with flights.leading(key): ...   # or call finish(key, hit_or_none) on every path yourself

A follower that gets None goes upstream itself. Flights are per process; the key (which includes the
tenant) is the exact key, so followers only ever receive an answer to exactly their request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from epp.cache.types import CacheHit


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[CacheHit | None]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: str) -> asyncio.Future[CacheHit | None] | None:
        """The future of the flight running for `key` (await it shielded, with a timeout), or None."""
        return self._flights.get(key)

    def lead(self, key: str) -> bool:
        """Start a flight for `key`; True when the caller now leads it and must `finish` it."""
        if key in self._flights:
            return False
        self._flights[key] = asyncio.get_running_loop().create_future()
        return True

    def finish(self, key: str, hit: CacheHit | None) -> None:
        """End the flight: its followers get `hit` (None: go upstream yourselves). Idempotent."""
        future = self._flights.pop(key, None)
        if future is not None and not future.done():
            future.set_result(hit)

    @contextlib.contextmanager
    def leading(self, key: str) -> Iterator[Lead]:
        """Lead the flight for `key` (already started with `lead`): it is finished on every exit, with
        `resolve()`'s hit or None (an exception or cancellation included)."""
        lead = Lead()
        try:
            yield lead
        finally:
            self.finish(key, lead.hit)

    @staticmethod
    async def wait(future: asyncio.Future[CacheHit | None], timeout_s: float) -> CacheHit | None:
        """The leader's hit, or None after `timeout_s`; cancelling the waiter leaves the flight alone."""
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            return None


class Lead:
    __slots__ = ("hit",)

    def __init__(self) -> None:
        self.hit: CacheHit | None = None

    def resolve(self, hit: CacheHit | None) -> None:
        self.hit = hit
