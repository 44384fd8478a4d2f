import random
from collections import Counter

import pytest

from epp.config import RoutingStrategy, builtin_strategy
from epp.datastore import Datastore, MetricsSnapshot
from epp.scheduling.builder import build_scheduler
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import LLMRequest, SchedulingResult
from scorers.builtin import default_registry
from tests.test_sched_support import datastore, request, snap

SHARED = "You are a helpful assistant. " * 120  # ~3.5K chars, many 64-char blocks


def scheduler(strategy: RoutingStrategy, ds: Datastore, seed: int = 0) -> Scheduler:
    return build_scheduler(builtin_strategy(strategy), ds, default_registry(), random.Random(seed))


def sent(sched: Scheduler, req: LLMRequest) -> SchedulingResult:
    """Schedule, then run the before-request hooks as the director does when it forwards the request."""
    result = sched.schedule(req)
    for hook in sched.profile(result.profile).pre_requests:
        hook.pre_request(result.context, result.endpoint)
    return result


def idle_pods(n: int = 4) -> dict[str, MetricsSnapshot]:
    return {f"pod-{i}": snap() for i in range(n)}


def test_default_registry_has_every_builtin_type() -> None:
    assert default_registry().types() == [
        "kv-cache-utilization-scorer",
        "least-request-scorer",
        "lora-affinity-scorer",
        "max-score-picker",
        "precise-prefix-cache-scorer",
        "prefill-affinity-filter",
        "prefill-load-scorer",
        "prefix-affinity-filter",
        "prefix-cache-scorer",
        "queue-scorer",
        "random-picker",
        "round-robin-picker",
        "saturation-filter",
    ]


@pytest.mark.parametrize("strategy", list(RoutingStrategy))
def test_every_builtin_strategy_builds_and_schedules(strategy: RoutingStrategy) -> None:
    sched = scheduler(strategy, datastore(idle_pods()))
    result = sched.schedule(request(SHARED + "question"))
    assert result.profile == strategy.profile_name
    assert result.endpoint.name in idle_pods()


def test_prefix_cache_sticks_requests_sharing_a_prefix_to_one_pod() -> None:
    sched = scheduler(RoutingStrategy.PREFIX_CACHE, datastore(idle_pods()))
    results = [sent(sched, request(SHARED + f"question number {i}")) for i in range(20)]
    assert len({r.endpoint.name for r in results}) == 1
    assert results[0].prefix_match_ratio == 0.0  # nothing cached yet
    assert all(r.prefix_match_ratio is not None and r.prefix_match_ratio > 0.9 for r in results[1:])
    # Round robin spreads the same requests: the stickiness above comes from the strategy.
    rr = scheduler(RoutingStrategy.ROUND_ROBIN, datastore(idle_pods()))
    assert len({sent(rr, request(SHARED + f"q{i}")).endpoint.name for i in range(20)}) == 4


def test_prefix_cache_moves_off_a_saturated_pod_holding_the_prefix() -> None:
    ds = datastore(idle_pods())
    sched = scheduler(RoutingStrategy.PREFIX_CACHE, ds)
    home = sent(sched, request(SHARED + "first")).endpoint.name
    ds.update_metrics(home, snap(waiting=12))
    picks = {sent(sched, request(SHARED + f"again {i}")).endpoint.name for i in range(10)}
    assert home not in picks


@pytest.mark.parametrize("strategy", list(RoutingStrategy))
def test_saturated_pods_are_avoided(strategy: RoutingStrategy) -> None:
    pods = idle_pods()
    pods["pod-1"] = snap(waiting=9)
    pods["pod-2"] = snap(kv=0.95)
    sched = scheduler(strategy, datastore(pods))
    picks = Counter(sched.schedule(request(f"prompt {i} " * 30)).endpoint.name for i in range(30))
    assert set(picks) <= {"pod-0", "pod-3"}


def test_load_aware_sends_lora_request_to_pod_with_adapter() -> None:
    pods = {
        "pod-0": snap(running_loras=frozenset({"chat"}), max_lora=1),
        "pod-1": snap(running_loras=frozenset({"sql"}), max_lora=1),
        "pod-2": snap(running_loras=frozenset({"chat"}), max_lora=1),
    }
    sched = scheduler(RoutingStrategy.LOAD_AWARE, datastore(pods))
    for i in range(10):
        result = sched.schedule(request(f"translate {i}", lora="sql"))
        assert result.endpoint.name == "pod-1"
        assert result.scores["lora-affinity-scorer"] == {"pod-0": 0.0, "pod-1": 1.0, "pod-2": 0.0}
