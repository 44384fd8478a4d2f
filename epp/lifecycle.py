"""How a long-running epp server waits to be told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable


async def wait_for_shutdown(
    stop: asyncio.Event,
    server_task: asyncio.Task[None],
    on_hangup: Callable[[], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Return on SIGINT/SIGTERM, when `stop` is set, or when `server_task` ends on its own; SIGHUP calls
    `on_hangup` (a config reload) if given. `on_ready` runs once the handlers are in place, so a signal sent
    as soon as the server says it is ready is handled, not fatal.

    Signal handlers are installed only where the loop allows it (the main thread on Unix).
    """
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    handlers: list[tuple[signal.Signals, Callable[[], object]]] = [
        (signal.SIGINT, stop.set),
        (signal.SIGTERM, stop.set),
    ]
    if on_hangup is not None and hasattr(signal, "SIGHUP"):
        handlers.append((signal.SIGHUP, on_hangup))
    for sig, handler in handlers:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
            handled.append(sig)
    if on_ready is not None:
        on_ready()
    stop_wait = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stop_wait, server_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
        for sig in handled:
            loop.remove_signal_handler(sig)
