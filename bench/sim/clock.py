"""Simulated time: wall-clock time multiplied by a time scale."""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    """Simulated seconds since creation; runs `time_scale` times faster than `wall` (monotonic seconds)."""

    def __init__(self, time_scale: float = 1.0, wall: Callable[[], float] = time.monotonic) -> None:
        if time_scale <= 0:
            raise ValueError(f"time scale must be positive, got {time_scale}")
        self.time_scale = time_scale
        self._wall = wall
        self._origin = wall()

    def now(self) -> float:
        """Current simulated time."""
        return (self._wall() - self._origin) * self.time_scale

    def wall_delay(self, sim_time: float) -> float:
        """Wall seconds from now until simulated time `sim_time` (negative if it has passed)."""
        return (sim_time - self.now()) / self.time_scale
