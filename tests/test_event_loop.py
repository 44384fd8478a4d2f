"""epp.event_loop: services run on uvloop when it is installed, on asyncio's own loop otherwise."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from epp import event_loop


async def _loop_class_name() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_runs_main_on_uvloop_and_returns_its_result() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.run(_loop_class_name()).startswith("uvloop")


def test_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` raise ImportError
    assert event_loop.loop_factory() is None
    assert event_loop.run(_loop_class_name()).startswith("asyncio")


def test_startup_objects_are_frozen_out_of_the_collector() -> None:
    gc.unfreeze()
    try:
        event_loop.run(_loop_class_name())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


async def _threshold() -> int:
    return gc.get_threshold()[0]


def test_young_generation_is_collected_less_often_while_serving_only() -> None:
    before = gc.get_threshold()
    assert event_loop.run(_threshold()) == event_loop.SERVICE_GC_THRESHOLD != before[0]
    assert gc.get_threshold() == before  # restored once the service is over
