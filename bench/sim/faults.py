"""Injectable misbehaviour of one simulated pod, for router tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

FaultMode = Literal["none", "error", "hang", "close", "metrics_down", "metrics_hang"]
FAULT_MODES: tuple[FaultMode, ...] = ("none", "error", "hang", "close", "metrics_down", "metrics_hang")


@dataclass
class FaultState:
    """Current fault of a pod.

    - error: inference requests get `status` (default 503) with an OpenAI-style error body;
    - hang: inference requests get no answer until the fault is cleared (then they are served);
    - close: inference connections are closed without any response;
    - metrics_down: /metrics connections are closed without a response (inference still served);
    - metrics_hang: /metrics never answers until cleared (the scraper times out).
    """

    mode: FaultMode = "none"
    status: int = 503
    _cleared: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.mode == "none":
            self._cleared.set()

    def set(self, mode: str, status: int = 503) -> None:
        """Switch to `mode`; ValueError on an unknown mode or a status that is not 4xx/5xx."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(FAULT_MODES)}")
        if not 400 <= status <= 599:
            raise ValueError(f"fault status must be 4xx or 5xx, got {status}")
        self.mode = mode
        self.status = status
        if mode == "none":
            self._cleared.set()
        else:
            self._cleared.clear()

    def clear(self) -> None:
        """Back to normal service; hung requests resume."""
        self.set("none")

    async def wait_cleared(self) -> None:
        """Block until the fault is cleared."""
        await self._cleared.wait()
