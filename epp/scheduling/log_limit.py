"""A token bucket for per-decision log lines, so an INFO line per request cannot flood the log under load."""

from __future__ import annotations

import time
from collections.abc import Callable


class LogRateLimiter:
    """Allows `per_second` lines a second on average, in bursts of up to `burst` (default: a second's worth).

    `acquire()` returns None when the line must be dropped, else how many lines were dropped since the last
    allowed one, so that line can say so. Not locked: a race costs at most a line more or less.
    """

    def __init__(
        self,
        per_second: float = 20.0,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second <= 0:
            raise ValueError(f"per_second must be positive, got {per_second}")
        self.rate = per_second
        self.capacity = burst if burst is not None else per_second
        if self.capacity < 1:
            raise ValueError(f"burst must be at least 1, got {self.capacity}")
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._suppressed = 0

    def acquire(self) -> int | None:
        now = self._clock()
        tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            self._suppressed += 1
            return None
        self._tokens = tokens - 1.0
        dropped, self._suppressed = self._suppressed, 0
        return dropped
