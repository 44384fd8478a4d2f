"""`prefill-load-scorer` with `replicas: R`: its own backlog and in-flight count stand for R pickers'."""

from __future__ import annotations

import random

import pytest

from epp.datastore import Datastore
from epp.scheduling.plugins import PluginConfigError, PluginDeps
from epp.scheduling.types import SchedulingContext
from scorers.prefill_load_scorer import PrefillLoadScorer
from scorers.prefill_load_scorer import factory as load_factory
from scorers.prefix_cache_scorer import PrefixCacheScorer
from tests.test_prefill_tokens import BLOCK, FakeClock, send, streamed
from tests.test_sched_support import cand


def pair(replicas: int) -> tuple[PrefixCacheScorer, PrefillLoadScorer]:
    clock = FakeClock()
    prefix = PrefixCacheScorer(block_size=BLOCK, auto_size_lru=False)
    load = PrefillLoadScorer(prefix=prefix, prior_rate=4000.0, clock=clock, replicas=replicas)
    rng = random.Random(5)
    for _ in range(150):  # pod "a" learns that each request it decodes costs a new prefill 15 ms
        work, busy = rng.uniform(100, 4000), rng.randrange(0, 24)
        load.rates.observe("a", work, 0.02 + work / 4000 + 0.015 * busy, busy)
    return prefix, load


def wait_on(load: PrefillLoadScorer, pod: str, in_flight: int = 0, running: int = 0) -> float:
    ctx = SchedulingContext(streamed("a new question " * 50))
    return load.estimated_waits(ctx, [cand(pod, in_flight=in_flight, running=running)])[pod]


def test_own_backlog_counts_for_every_replica() -> None:
    waits = {}
    for replicas in (1, 2):
        prefix, load = pair(replicas)
        send(prefix, load, streamed("queued work " * 1000), "a")  # ~3,000 tokens not yet at a first token
        idle = wait_on(load, "b")
        waits[replicas] = wait_on(load, "a") - idle  # the queue's share of the wait
    assert waits[1] > 0
    assert waits[2] == pytest.approx(2 * waits[1], rel=0.01)


def test_in_flight_scales_but_never_below_the_scrape() -> None:
    _, one = pair(1)
    _, two = pair(2)
    base = wait_on(one, "a")
    per_request = 0.015
    # 3 of this picker's requests decode there and the scrape says 4: alone max(3, 4) = 4, with 2 pickers 6.
    assert wait_on(one, "a", in_flight=3, running=4) - base == pytest.approx(4 * per_request, rel=0.3)
    assert wait_on(two, "a", in_flight=3, running=4) - base == pytest.approx(6 * per_request, rel=0.3)
    # The scrape sees more than 2 x ours: it wins either way.
    scraped = wait_on(one, "a", in_flight=1, running=9)
    assert wait_on(two, "a", in_flight=1, running=9) == pytest.approx(scraped)


def test_factory_reads_replicas_and_refuses_bad_values() -> None:
    deps = PluginDeps(datastore=Datastore())
    deps.plugins["prefix-cache-scorer"] = PrefixCacheScorer()
    assert load_factory("load", {"replicas": 3}, deps).replicas == 3
    assert load_factory("load", {}, deps).replicas == 1
    with pytest.raises(PluginConfigError, match="replicas"):
        load_factory("load", {"replicas": 0}, deps)
