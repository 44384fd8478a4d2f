"""Run a service's main coroutine on uvloop when it is installed (it comes with uvicorn[standard]).

uvloop's C event loop costs far less per request than asyncio's selector loop; grpc.aio, uvicorn and aiohttp
all run on it. Without uvloop the default asyncio loop is used. Everything imported and built before the
service starts (modules, config, protobuf descriptors) is frozen out of the garbage collector, so the full
collections that request traffic triggers do not walk it over and over; and the young generation is
collected less often while the service runs (SERVICE_GC_THRESHOLD).
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


# The collector's first-generation threshold while a service runs (Python's default: 700). A request allocates
# hundreds of container objects that reference counting frees; at 700 the young generation was collected
# every few requests and the older ones (the prefix index, the pools) traversed often, tens of microseconds
# of CPU per request. The little cyclic garbage left (gRPC's per-call state) waits for a later collection.
SERVICE_GC_THRESHOLD = 20_000


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the fastest available event loop (the collector tuned for serving meanwhile)."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(SERVICE_GC_THRESHOLD, *thresholds[1:])
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(main)
    finally:
        gc.set_threshold(*thresholds)
