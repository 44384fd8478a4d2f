"""Token-aware prefix affinity (`prefill-load-scorer`, `prefill-affinity-filter`) over the precise prefix
scorer: what a pod holds comes from its KV events (a simulated engine's, through the real wire encoding),
and `PRECISE_TOKENS` is the bench variant that wires them so."""

from __future__ import annotations

from typing import Any

from bench.compare.variants import PRECISE_CONFIGS, PRECISE_TOKENS, needs_kv_events, strategy_variant
from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint
from epp.kv_events.precise_index import PreciseIndex
from epp.scheduling.plugins import PluginDeps
from scorers.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from scorers.precise_prefix_cache_scorer import factory as precise_factory
from scorers.prefill_affinity_filter import DECISION_KEY, PrefillAffinityFilter
from scorers.prefill_affinity_filter import factory as affinity_factory
from scorers.prefill_load_scorer import PrefillLoadScorer
from scorers.prefill_load_scorer import factory as load_factory
from tests.test_precise_scorer import FedPod, chat, request
from tests.test_sched_support import cand


def wired(index: PreciseIndex) -> tuple[PrecisePrefixCacheScorer, PrefillLoadScorer, PrefillAffinityFilter]:
    """The three plugins built by their factories, the load scorer and the filter naming the precise one."""
    deps = PluginDeps(Datastore(), kv_index=index)
    precise = precise_factory("precise", {"speculative": False}, deps)
    deps.plugins["precise"] = precise
    load = load_factory("load", {"prefixPluginRef": "precise"}, deps)
    deps.plugins["load"] = load
    filt = affinity_factory("f", {"prefixPluginRef": "precise", "loadPluginRef": "load"}, deps)
    assert isinstance(load, PrefillLoadScorer) and isinstance(filt, PrefillAffinityFilter)
    return precise, load, filt


def new_user(i: int) -> dict[str, Any]:
    return chat("billing", f"I am new user number {i}, how do I pay my invoice?")


def test_the_wait_counts_only_what_the_pods_events_say_they_lack() -> None:
    index = PreciseIndex()
    warm = FedPod("warm", index)
    FedPod("cold", index)
    warm.serve(new_user(0))  # the warm pod now holds the shared system prompt, by its events
    precise, load, _ = wired(index)
    ctx = request(new_user(1))
    waits = load.estimated_waits(ctx, [cand("warm"), cand("cold")])
    assert waits["warm"] < waits["cold"]
    ratio = precise.predicted_ratio(ctx, "warm")
    assert ratio is not None and ratio > 0.5 and precise.predicted_ratio(ctx, "cold") == 0.0
    # What the pick queues is the uncached part only: the prompt's characters less the held share.
    chars = len(ctx.request.prompt)
    assert load.uncached_tokens(ctx, "cold") == chars / load.chars_per_token
    assert abs(load.uncached_tokens(ctx, "warm") - chars * (1 - ratio) / load.chars_per_token) < 1e-6
    load.pre_request(ctx, Endpoint("warm", "127.0.0.1", 8000))
    assert 0 < load.pending_tokens("warm") <= load.uncached_tokens(ctx, "warm")
    assert load.pending_tokens("warm") > 0.9 * load.uncached_tokens(ctx, "warm")
    assert load.pending_tokens("cold") == 0.0


def test_a_hot_system_prompt_spreads_to_an_idle_pod_by_the_events() -> None:
    index = PreciseIndex()
    warm = FedPod("warm", index)
    FedPod("idle", index)
    FedPod("busy", index)
    warm.serve(new_user(0))
    _, _, filt = wired(index)
    pods = [cand("warm", in_flight=2, running=2), cand("idle"), cand("busy", in_flight=1, running=1)]
    kept = []
    for i in range(1, 5):  # new users behind one system prompt: the prefix the events name gets hot
        ctx = request(new_user(i))
        kept.append([c.name for c in filt.filter(ctx, pods)])
    assert kept[:2] == [["warm"], ["warm"]]  # not hot yet: affinity holds
    assert kept[2:] == [["idle"], ["idle"]]  # hot and the warm pod busy: copy it to the idle pod
    assert ctx.cycle.data[DECISION_KEY]["spread"] is True
    # A returning user's own history ends at a block no one else reaches: it stays on its busy pod.
    history = chat("billing", "my earlier questions and answers " * 30)
    warm.serve(history)
    again = request({**history, "messages": [*history["messages"], {"role": "user", "content": "more?"}]})
    assert [c.name for c in filt.filter(again, pods)] == ["warm"]


def test_a_pod_the_events_do_not_cover_yet_falls_back_to_the_approximate_index() -> None:
    index = PreciseIndex()  # "new" was never reset as synced: the fallback scores it, learning from picks
    FedPod("warm", index).serve(new_user(0))
    precise, load, filt = wired(index)
    first = request(new_user(1))
    filt.filter(first, [cand("warm"), cand("new")])
    precise.pre_request(first, Endpoint("new", "127.0.0.1", 8000))
    ctx = request(new_user(1))
    load.estimated_waits(ctx, [cand("warm"), cand("new")])
    assert "new" in precise.cycle_match(ctx).approximate
    assert precise.matched_key(ctx, "new") == precise.fallback.matched_key(ctx, "new") is not None
    assert load.uncached_tokens(ctx, "new") < len(ctx.request.prompt) / load.chars_per_token


def test_precise_tokens_is_a_bench_variant_that_follows_kv_events() -> None:
    path = PRECISE_CONFIGS[PRECISE_TOKENS]
    assert needs_kv_events(path)
    variant = strategy_variant("PRECISE_TOKENS@2")
    assert (variant.config, variant.workers, variant.kv_events) == (path, 2, True)
    plugins = {p.type: p.parameters for p in load_config([path], {}).picker_config.plugins}
    assert plugins["prefill-load-scorer"]["prefixPluginRef"] == "precise-prefix-cache-scorer"
    assert plugins["prefill-affinity-filter"]["prefixPluginRef"] == "precise-prefix-cache-scorer"
