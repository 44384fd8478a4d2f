"""The prefix-cache-scorer plugin: ratios, once-per-cycle hashing, learning, sizing, forgetting, params."""

from __future__ import annotations

import pytest

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.scheduling.plugins import (
    PluginConfigError,
    PluginDeps,
    PluginRegistry,
    PreRequest,
    RequestFailed,
    Scorer,
)
from epp.scheduling.types import CLIENT_GONE, AttemptReport, Candidate, LLMRequest, SchedulingContext
from scorers import prefix_cache_scorer
from scorers.prefix_cache_scorer import PrefixCacheScorer, factory

MODEL = "llama"


def snap(t: float = 0.0, *, block_size: int | None = None, gpu_blocks: int | None = None, start: float = 1.0):
    return MetricsSnapshot(
        waiting=0,
        running=0,
        kv_cache_usage=0.0,
        block_size=block_size,
        num_gpu_blocks=gpu_blocks,
        process_start_time=start,
        scraped_at=t,
    )


def cand(name: str, metrics: MetricsSnapshot | None = None) -> Candidate:
    return Candidate(Endpoint(name, "127.0.0.1", 8000), metrics or snap(), 0)


def ctx(prompt: str, model: str = MODEL) -> SchedulingContext:
    return SchedulingContext(LLMRequest("r", model, model, prompt))


def blocks(n: int, seed: str = "p") -> str:
    return "".join(f"{seed}{i:05d}".ljust(64, ".") for i in range(n))


def test_is_scorer_and_lifecycle_hooks_and_registers() -> None:
    plugin = PrefixCacheScorer()
    assert isinstance(plugin, Scorer) and isinstance(plugin, PreRequest) and isinstance(plugin, RequestFailed)
    registry = PluginRegistry()
    prefix_cache_scorer.register(registry)
    built = registry.build("prefix-cache-scorer", "pc", {}, PluginDeps(Datastore()))
    assert isinstance(built, PrefixCacheScorer) and built.name == "pc"


def test_ratio_math_and_learning_from_sent_requests() -> None:
    plugin = PrefixCacheScorer(auto_size_lru=False)
    a, b = cand("a"), cand("b")
    first = ctx(blocks(4))
    assert plugin.score(first, [a, b]) == {"a": 0.0, "b": 0.0}
    plugin.pre_request(first, a.endpoint)

    second = ctx(blocks(4) + blocks(4, seed="q") + "partial")  # 8 full blocks, 4 shared
    assert plugin.score(second, [a, b]) == {"a": 0.5, "b": 0.0}
    assert plugin.matched_blocks(second) == {"a": 4}
    assert plugin.total_blocks(second) == 8
    plugin.pre_request(second, b.endpoint)
    assert plugin.score(ctx(blocks(8)[: 64 * 3]), [a, b]) == {"a": 1.0, "b": 1.0}


def test_no_full_block_scores_zero() -> None:
    plugin = PrefixCacheScorer()
    short = ctx("hello")
    plugin.pre_request(short, cand("a").endpoint)
    assert plugin.score(ctx("hello"), [cand("a")]) == {"a": 0.0}


def test_hashes_computed_once_per_cycle() -> None:
    plugin = PrefixCacheScorer(name="pc")
    c = ctx(blocks(3))
    plugin.match_ratios(c, [cand("a")])
    cached = [k for k in c.cycle.data if k.endswith(":pc")]  # the hashes (not the geometry flag)
    assert len(cached) == 1
    stored = c.cycle.data[cached[0]]
    plugin.score(c, [cand("a"), cand("b")])
    plugin.pre_request(c, cand("a").endpoint)
    assert c.cycle.data[cached[0]] is stored
    assert len(stored.hashes) == 3


def test_two_instances_do_not_share_cycle_entries() -> None:
    one, two = PrefixCacheScorer(name="one"), PrefixCacheScorer(name="two")
    learn = ctx(blocks(2))
    one.pre_request(learn, cand("a").endpoint)
    c = ctx(blocks(2))
    assert one.score(c, [cand("a")]) == {"a": 1.0}
    assert two.score(c, [cand("a")]) == {"a": 0.0}


def test_auto_size_from_metrics_and_resize_on_later_scrape() -> None:
    plugin = PrefixCacheScorer(block_size=64, lru_capacity_per_server=31250)
    # 16 tokens/block x 10 blocks = 160 tokens ~ 640 chars = 10 index blocks
    small = cand("a", snap(1.0, block_size=16, gpu_blocks=10))
    c = ctx(blocks(20))
    plugin.match_ratios(c, [small])
    assert plugin.index.capacity("a") == 10
    plugin.pre_request(c, small.endpoint)
    assert plugin.index.size("a") == 10
    assert plugin.score(ctx(blocks(20)), [small]) == {"a": 0.5}  # the leading 10 blocks survive

    smaller = cand("a", snap(2.0, block_size=16, gpu_blocks=4))
    plugin.match_ratios(ctx("x"), [smaller])
    assert plugin.index.capacity("a") == 4
    assert plugin.index.size("a") == 4

    unknown = cand("a", snap(3.0))
    plugin.match_ratios(ctx("x"), [unknown])
    assert plugin.index.capacity("a") == 31250


def test_auto_size_off_uses_configured_capacity() -> None:
    plugin = PrefixCacheScorer(lru_capacity_per_server=5, auto_size_lru=False)
    pod = cand("a", snap(block_size=16, gpu_blocks=1000))
    plugin.pre_request(ctx(blocks(9)), pod.endpoint)
    assert plugin.index.capacity("a") == 5
    assert plugin.index.size("a") == 5


def test_forgets_pod_on_removed_and_restarted_via_datastore() -> None:
    ds = Datastore()
    plugin = factory("pc", {"autoSizeLRU": False}, PluginDeps(ds))
    a, b = Endpoint("a", "127.0.0.1", 1), Endpoint("b", "127.0.0.1", 2)
    ds.set_endpoints([a, b])
    ds.update_metrics("a", snap(1.0, start=100.0))
    ds.update_metrics("b", snap(1.0, start=100.0))
    ca, cb = Candidate.from_state(ds.get("a")), Candidate.from_state(ds.get("b"))  # type: ignore[arg-type]
    plugin.pre_request(ctx(blocks(3)), ca.endpoint)
    plugin.pre_request(ctx(blocks(3)), cb.endpoint)
    assert plugin.score(ctx(blocks(3)), [ca, cb]) == {"a": 1.0, "b": 1.0}

    ds.update_metrics("a", snap(2.0, start=200.0))  # new process start time: restart
    assert plugin.score(ctx(blocks(3)), [ca, cb]) == {"a": 0.0, "b": 1.0}
    assert plugin.index.size("a") == 0

    ds.set_endpoints([a])
    assert plugin.index.pods() == []
    assert plugin.score(ctx(blocks(3)), [cb]) == {"b": 0.0}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"blockSize": 0}, "blockSize"),
        ({"blockSize": "64"}, "blockSize"),
        ({"blockSize": True}, "blockSize"),
        ({"maxPrefixBlocksToMatch": -1}, "maxPrefixBlocksToMatch"),
        ({"lruCapacityPerServer": 1.5}, "lruCapacityPerServer"),
        ({"autoSizeLRU": "yes"}, "autoSizeLRU"),
        ({"blocksize": 64}, "blocksize"),
    ],
)
def test_bad_params_name_the_parameter(params: dict[str, object], named: str) -> None:
    with pytest.raises(PluginConfigError, match=named):
        factory("pc", params, PluginDeps(Datastore()))


def test_params_accepted_including_gie_spelling() -> None:
    plugin = factory(
        "pc",
        {"hashBlockSize": 32, "maxPrefixBlocksToMatch": 8, "lruCapacityPerServer": 100, "autoSizeLRU": False},
        PluginDeps(Datastore()),
    )
    assert (plugin.block_size, plugin.max_prefix_blocks, plugin.index.default_capacity) == (32, 8, 100)
    assert plugin.auto_size_lru is False


def sent(plugin: PrefixCacheScorer, c: SchedulingContext, pod: Candidate) -> None:
    plugin.score(c, [pod])
    plugin.pre_request(c, pod.endpoint)


def test_refused_attempt_takes_back_only_the_blocks_it_added() -> None:
    plugin = PrefixCacheScorer(auto_size_lru=False)
    a, b = cand("a"), cand("b")
    sent(plugin, ctx(blocks(2)), a)  # a already holds the first two blocks
    c = ctx(blocks(5))
    sent(plugin, c, a)
    assert plugin.index.size("a") == 5
    plugin.request_failed(c, AttemptReport(a.endpoint, error="connect_failed"))
    assert plugin.index.size("a") == 2  # the three new blocks went, the two it had stay
    assert plugin.score(ctx(blocks(5)), [a]) == {"a": 0.4}
    # The retry on b is remembered; a second failure report for a changes nothing.
    plugin.pre_request(c, b.endpoint)
    plugin.request_failed(c, AttemptReport(a.endpoint, error="connect_failed"))
    assert plugin.score(ctx(blocks(5)), [a, b]) == {"a": 0.4, "b": 1.0}


def test_answered_or_abandoned_attempt_keeps_its_blocks() -> None:
    plugin = PrefixCacheScorer(auto_size_lru=False)
    a = cand("a")
    c = ctx(blocks(3))
    sent(plugin, c, a)
    plugin.request_failed(c, AttemptReport(a.endpoint, status=500, responded=True, error="http_5xx"))
    assert plugin.index.size("a") == 3
    gone = ctx(blocks(4, seed="g"))
    sent(plugin, gone, a)
    plugin.request_failed(gone, AttemptReport(a.endpoint, error=CLIENT_GONE))  # the client left, not the pod
    assert plugin.index.size("a") == 7
    other = ctx(blocks(3, seed="z"))
    plugin.request_failed(other, AttemptReport(a.endpoint))  # never sent anywhere: nothing to take back
    assert plugin.index.size("a") == 7


def test_cache_salt_separates_prefixes() -> None:
    plugin = PrefixCacheScorer(auto_size_lru=False)
    a = cand("a")

    def salted(salt: str | None) -> SchedulingContext:
        return SchedulingContext(LLMRequest("r", MODEL, MODEL, blocks(4), cache_salt=salt))

    plugin.pre_request(salted("tenant-1"), a.endpoint)
    assert plugin.score(salted("tenant-1"), [a]) == {"a": 1.0}
    assert plugin.score(salted("tenant-2"), [a]) == {"a": 0.0}
    assert plugin.score(salted(None), [a]) == {"a": 0.0}


def test_a_full_window_match_counts_the_whole_longer_prompt_as_cached() -> None:
    plugin = PrefixCacheScorer(max_prefix_blocks=4, auto_size_lru=False)
    document = blocks(10)  # longer than the 4-block window
    plugin.pre_request(ctx(document + "first question"), cand("a").endpoint)
    plugin.pre_request(ctx(blocks(3) + blocks(7, seed="other")), cand("b").endpoint)
    asked = ctx(document + "second question")
    # a holds the whole window: the rest of the document is taken as held too; b only its 3 blocks.
    assert plugin.cached_chars(asked, ()) == {"a": float(len(document + "second question")), "b": 3 * 64.0}
    # A prompt within the window counts only the blocks it matched.
    short = ctx(blocks(4))
    plugin.pre_request(short, cand("c").endpoint)
    assert plugin.cached_chars(ctx(blocks(4)), ())["c"] == 4 * 64.0


def test_kv_geometry_is_checked_once_per_cycle() -> None:
    plugin = PrefixCacheScorer(block_size=64)
    c = ctx(blocks(3))
    plugin.match_ratios(c, [cand("a", snap(1.0, block_size=16, gpu_blocks=10))])
    assert plugin.index.capacity("a") == 10
    # The scorer's call in the same cycle does not size again (it sees a subset of the filter's pods)...
    plugin.match_ratios(c, [cand("a", snap(2.0, block_size=16, gpu_blocks=4))])
    assert plugin.index.capacity("a") == 10
    # ...the next cycle does.
    plugin.match_ratios(ctx(blocks(3)), [cand("a", snap(2.0, block_size=16, gpu_blocks=4))])
    assert plugin.index.capacity("a") == 4
