"""`least-request-scorer` with `replicas: R`: this picker's in-flight count stands for R pickers'."""

from __future__ import annotations

import pytest

from epp.datastore import Datastore
from epp.scheduling.plugins import PluginConfigError, PluginDeps
from scorers import least_request_scorer
from scorers.least_request_scorer import LeastRequestScorer, load
from tests.test_sched_support import cand, ctx


def test_replicas_scale_own_in_flight_not_the_scrape() -> None:
    own_burst = cand("a", in_flight=3, running=4)  # 3 of ours since the scrape; 2 replicas: about 6 in all
    assert load(own_burst) == 4
    assert load(own_burst, replicas=2) == 6
    scraped = cand("b", in_flight=1, running=5, waiting=2)  # the scrape already says more
    assert load(scraped, replicas=2) == 7


def test_two_replicas_see_a_shared_burst_one_replica_would_miss() -> None:
    """Each of 2 replicas sent 3 requests to pod a since the scrape, which says a has 4 and b has 5.
    Seen alone, a looks lighter (max(3, 4) = 4 < 5); with replicas: 2, a carries about 6 and b wins."""
    pods = [cand("a", in_flight=3, running=4), cand("b", in_flight=0, running=5)]
    alone = LeastRequestScorer().score(ctx(), pods)
    assert alone["a"] > alone["b"]
    shared = LeastRequestScorer(replicas=2).score(ctx(), pods)
    assert shared["b"] > shared["a"]


def test_factory_reads_replicas_and_refuses_bad_values() -> None:
    deps = PluginDeps(Datastore())
    assert least_request_scorer.factory("lr", {"replicas": 3}, deps).replicas == 3
    assert least_request_scorer.factory("lr", {}, deps).replicas == 1
    with pytest.raises(PluginConfigError, match="plugin 'lr': parameter 'replicas'"):
        least_request_scorer.factory("lr", {"replicas": 0}, deps)
    with pytest.raises(PluginConfigError, match="parameter 'bogus'"):
        least_request_scorer.factory("lr", {"bogus": 1}, deps)
