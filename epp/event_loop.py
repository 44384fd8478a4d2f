"""Run a service's main coroutine on uvloop when it is installed (it comes with uvicorn[standard]).

uvloop's C event loop costs far less per request than asyncio's selector loop; grpc.aio, uvicorn and aiohttp
all run on it. Without uvloop the default asyncio loop is used. Everything imported and built before the
service starts (modules, config, protobuf descriptors) is frozen out of the garbage collector, so the full
collections that request traffic triggers do not walk it over and over.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None (asyncio's default loop) when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the fastest available event loop."""
    gc.collect()
    gc.freeze()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
