import pytest

from epp.scheduling.plugins import PluginConfigError, PluginDeps, PluginRegistry
from scorers import kv_cache_scorer, least_request_scorer, lora_affinity_scorer, queue_scorer
from scorers.kv_cache_scorer import KVCacheUtilizationScorer
from scorers.least_request_scorer import LeastRequestScorer
from scorers.lora_affinity_scorer import LoraAffinityScorer
from scorers.queue_scorer import QueueScorer
from tests.test_sched_support import cand, ctx, datastore, request


def test_queue_scorer_min_max_normalises_waiting() -> None:
    scores = QueueScorer().score(ctx(), [cand("a", waiting=0), cand("b", waiting=5), cand("c", waiting=10)])
    assert scores == {"a": 1.0, "b": 0.5, "c": 0.0}


def test_queue_scorer_all_equal_scores_one() -> None:
    scores = QueueScorer().score(ctx(), [cand("a", waiting=3), cand("b", waiting=3)])
    assert scores == {"a": 1.0, "b": 1.0}


def test_kv_cache_scorer_prefers_free_cache_and_clamps() -> None:
    scores = KVCacheUtilizationScorer().score(
        ctx(), [cand("a", kv=0.25), cand("b", kv=0.9), cand("c", kv=1.2)]
    )
    assert scores["a"] == pytest.approx(0.75)
    assert scores["b"] == pytest.approx(0.1)
    assert scores["c"] == 0.0


def test_least_request_uses_in_flight_before_next_scrape() -> None:
    # Scrapes say both idle, but this picker already sent 4 requests to a: a must score lower.
    scores = LeastRequestScorer().score(ctx(), [cand("a", in_flight=4), cand("b", in_flight=0)])
    assert scores == {"a": 0.0, "b": 1.0}


def test_least_request_uses_scraped_load_from_other_clients() -> None:
    # No requests from this picker, but b is busy with other traffic (running + waiting).
    scores = LeastRequestScorer().score(
        ctx(), [cand("a", running=1, waiting=0), cand("b", running=3, waiting=2), cand("c", running=3)]
    )
    assert scores == {"a": 1.0, "b": 0.0, "c": 0.5}


def test_least_request_does_not_double_count_scraped_in_flight() -> None:
    # a: our 3 requests are already visible in the scrape (load 3); b: 4 requests from elsewhere.
    scores = LeastRequestScorer().score(ctx(), [cand("a", in_flight=3, running=3), cand("b", running=4)])
    assert scores == {"a": 1.0, "b": 0.0}


def test_lora_affinity_scores() -> None:
    cands = [
        cand("running", running_loras=frozenset({"sql"}), max_lora=1),
        cand("waiting", waiting_loras=frozenset({"sql"}), running_loras=frozenset({"x"}), max_lora=1),
        cand("free", running_loras=frozenset({"x"}), max_lora=2),
        cand("unknown", running_loras=frozenset({"x", "y"})),
        cand("full", running_loras=frozenset({"x", "y"}), max_lora=2),
        # The free slot is spoken for: "y" is waiting and will load into it.
        cand("claimed", running_loras=frozenset({"x"}), waiting_loras=frozenset({"y"}), max_lora=2),
    ]
    scores = LoraAffinityScorer().score(ctx(request(lora="sql")), cands)
    assert scores == {
        "running": 1.0,
        "waiting": 0.8,
        "free": 0.5,
        "unknown": 0.5,
        "full": 0.0,
        "claimed": 0.0,
    }


def test_lora_affinity_neutral_without_adapter() -> None:
    cands = [cand("a", running_loras=frozenset({"sql"})), cand("b", max_lora=0)]
    assert LoraAffinityScorer().score(ctx(request(lora=None)), cands) == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize(
    "module,type_name",
    [
        (queue_scorer, "queue-scorer"),
        (kv_cache_scorer, "kv-cache-utilization-scorer"),
        (least_request_scorer, "least-request-scorer"),
        (lora_affinity_scorer, "lora-affinity-scorer"),
    ],
)
def test_scorers_register_and_reject_unknown_params(module, type_name) -> None:
    registry = PluginRegistry()
    module.register(registry)
    deps = PluginDeps(datastore=datastore({}))
    plugin = registry.build(type_name, "mine", {}, deps)
    assert plugin.name == "mine"  # type: ignore[attr-defined]
    with pytest.raises(PluginConfigError, match=r"plugin 'mine'.*'bogus'"):
        registry.build(type_name, "mine", {"bogus": 1}, deps)
