"""epp.cache.singleflight: one identical miss goes upstream, the others wait for its answer (or give up)."""

from __future__ import annotations

import asyncio

import pytest

from epp.cache.singleflight import SingleFlight
from epp.cache.types import CacheHit, StoredAnswer

HIT = CacheHit(StoredAnswer(b"{}", "m", 0.0, 1.0), "exact", "e1")


async def test_followers_get_the_leaders_hit() -> None:
    flights = SingleFlight()
    assert flights.join("k") is None
    assert flights.lead("k") and not flights.lead("k")
    waiters = []
    for _ in range(3):
        waited = flights.join("k")
        assert waited is not None
        waiters.append(asyncio.create_task(flights.wait(waited, 10)))
    assert flights.join("other") is None
    await asyncio.sleep(0)
    flights.finish("k", HIT)
    assert await asyncio.gather(*waiters) == [HIT, HIT, HIT]
    assert len(flights) == 0 and flights.join("k") is None
    flights.finish("k", HIT)  # idempotent


async def test_a_failed_leader_releases_its_followers_with_nothing() -> None:
    flights = SingleFlight()
    assert flights.lead("k")
    waited = flights.join("k")
    assert waited is not None
    with pytest.raises(RuntimeError), flights.leading("k"):
        raise RuntimeError("upstream failed")
    assert await flights.wait(waited, 10) is None
    assert flights.lead("k")  # the next request may lead again


async def test_leading_resolves_with_the_hit() -> None:
    flights = SingleFlight()
    assert flights.lead("k")
    waited = flights.join("k")
    assert waited is not None
    with flights.leading("k") as lead:
        lead.resolve(HIT)
    assert await flights.wait(waited, 10) == HIT


async def test_a_cancelled_leader_task_releases_its_followers() -> None:
    flights = SingleFlight()
    started = asyncio.Event()

    async def leader() -> None:
        assert flights.lead("k")
        with flights.leading("k"):
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(leader())
    await started.wait()
    waited = flights.join("k")
    assert waited is not None
    task.cancel()
    assert await flights.wait(waited, 10) is None


async def test_followers_time_out_and_cancelling_one_leaves_the_flight() -> None:
    flights = SingleFlight()
    assert flights.lead("k")
    waited = flights.join("k")
    assert waited is not None
    assert await flights.wait(waited, 0.01) is None  # the leader is slow: go upstream yourself
    impatient = asyncio.create_task(flights.wait(waited, 10))
    await asyncio.sleep(0)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert not waited.cancelled()
    patient = asyncio.create_task(flights.wait(waited, 10))
    flights.finish("k", HIT)
    assert await patient == HIT
