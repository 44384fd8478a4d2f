"""The prefix-affinity-filter plugin (with its rate-limited INFO line), retries around it, and the seed
conversation fixtures."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.scheduling.log_limit import LogRateLimiter
from epp.scheduling.plugins import Filter, PluginConfigError, PluginDeps, PluginRegistry, PreRequest, Scorer
from epp.scheduling.profile import assemble_profile
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import AttemptReport, Candidate, LLMRequest, SchedulingContext, SchedulingResult
from scorers import prefix_affinity_filter, prefix_cache_scorer
from scorers.least_request_scorer import LeastRequestScorer
from scorers.max_score_picker import MaxScorePicker
from scorers.prefix_affinity_filter import DECISION_KEY, PrefixAffinityFilter
from scorers.prefix_cache_scorer import PrefixCacheScorer

MODEL = "/model/qwen"
FIXTURES = Path(__file__).parent / "fixtures" / "seed-configs"  # copied from shared/fixtures


def cand(name: str, waiting: int = 0, kv: float = 0.0) -> Candidate:
    return Candidate(Endpoint(name, "127.0.0.1", 8000), MetricsSnapshot(waiting, 0, kv), 0)


def ctx(prompt: str) -> SchedulingContext:
    return SchedulingContext(LLMRequest("r", MODEL, MODEL, prompt))


def blocks(n: int, seed: str = "p") -> str:
    return "".join(f"{seed}{i:05d}".ljust(64, ".") for i in range(n))


def build(params: dict[str, Any] | None = None) -> tuple[PrefixCacheScorer, PrefixAffinityFilter]:
    registry = PluginRegistry()
    prefix_cache_scorer.register(registry)
    prefix_affinity_filter.register(registry)
    deps = PluginDeps(Datastore())
    scorer = registry.build("prefix-cache-scorer", "prefix-cache-scorer", {"autoSizeLRU": False}, deps)
    deps.plugins["prefix-cache-scorer"] = scorer
    flt = registry.build("prefix-affinity-filter", "affinity", params or {}, deps)
    assert isinstance(scorer, PrefixCacheScorer) and isinstance(flt, PrefixAffinityFilter)
    return scorer, flt


def test_plugin_roles_are_unambiguous() -> None:
    scorer, flt = build()
    assert isinstance(flt, Filter) and not isinstance(flt, Scorer) and not isinstance(flt, PreRequest)
    assert not isinstance(scorer, Filter)
    assert flt.affinity is True  # a retry with relaxed affinity skips it


def test_above_threshold_keeps_only_best_pods(caplog: pytest.LogCaptureFixture) -> None:
    scorer, flt = build()
    a, b, c, d = cand("a"), cand("b"), cand("c"), cand("d")
    scorer.pre_request(ctx(blocks(10)), a.endpoint)
    scorer.pre_request(ctx(blocks(10)), b.endpoint)
    scorer.pre_request(ctx(blocks(6)), c.endpoint)
    req = ctx(blocks(10))
    with caplog.at_level(logging.INFO, logger="scorers.prefix_affinity_filter"):
        kept = flt.filter(req, [a, b, c, d])
    assert [k.name for k in kept] == ["a", "b"]
    assert req.cycle.data[DECISION_KEY] == {
        "ratio": 1.0,
        "threshold": 0.5,
        "applied": True,
        "kept": ["a", "b"],
    }
    assert 'Do prefix-aware routing! request r "matching ratio": " 1.00 > 0.50"' in caplog.text
    assert caplog.records[-1].levelno == logging.INFO


def test_at_or_below_threshold_passes_all() -> None:
    scorer, flt = build()
    pods = [cand("a"), cand("b")]
    scorer.pre_request(ctx(blocks(5)), pods[0].endpoint)
    at = ctx(blocks(5) + blocks(5, seed="q"))  # exactly 0.5
    assert flt.filter(at, pods) == pods
    assert at.cycle.data[DECISION_KEY]["applied"] is False
    assert at.cycle.data[DECISION_KEY]["ratio"] == 0.5
    cold = ctx(blocks(5, seed="z"))
    assert flt.filter(cold, pods) == pods


def test_saturated_best_pod_is_not_chosen_by_affinity() -> None:
    scorer, flt = build({"threshold": 0.3})
    busy, warm, idle = cand("busy", waiting=5), cand("warm"), cand("idle")
    scorer.pre_request(ctx(blocks(10)), busy.endpoint)
    scorer.pre_request(ctx(blocks(4)), warm.endpoint)
    kept = flt.filter(ctx(blocks(10)), [busy, warm, idle])
    assert [k.name for k in kept] == ["warm"]  # busy matches 1.0 but is saturated; warm matches 0.4 > 0.3

    full_kv = cand("busy", kv=0.8)
    req = ctx(blocks(10))
    assert flt.filter(req, [full_kv, idle]) == [full_kv, idle]  # only the saturated pod matches: no affinity
    assert req.cycle.data[DECISION_KEY]["ratio"] == 0.0


def test_all_saturated_passes_all() -> None:
    scorer, flt = build()
    pods = [cand("a", waiting=9), cand("b", kv=0.95)]
    scorer.pre_request(ctx(blocks(3)), pods[0].endpoint)
    assert flt.filter(ctx(blocks(3)), pods) == pods


def test_filter_reuses_scorer_cycle_hashes() -> None:
    scorer, flt = build()
    req = ctx(blocks(3))
    flt.filter(req, [cand("a")])
    match = scorer.cycle_match(req)
    scorer.score(req, [cand("a")])
    assert scorer.cycle_match(req) is match


@pytest.mark.parametrize(
    ("params", "plugins", "named"),
    [
        ({"prefixPluginRef": "nope"}, {}, "prefixPluginRef"),
        ({}, {"prefix-cache-scorer": object()}, "prefixPluginRef"),
        ({"threshold": 1.5}, None, "threshold"),
        ({"queueDepthThreshold": 5}, None, "queueDepthThreshold.*moved to.*saturationDetector"),
        ({"kvCacheUtilThreshold": 0.8}, None, "kvCacheUtilThreshold.*moved to.*saturationDetector"),
    ],
)
def test_bad_params_name_the_parameter(
    params: dict[str, Any], plugins: dict[str, object] | None, named: str
) -> None:
    deps = PluginDeps(Datastore())
    deps.plugins.update({"prefix-cache-scorer": PrefixCacheScorer()} if plugins is None else plugins)
    with pytest.raises(PluginConfigError, match=named):
        prefix_affinity_filter.factory("affinity", params, deps)


# -- seed fixtures: two rounds of one conversation ---------------------------------------------------
def flatten_role_colon(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def flatten_role_tags(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)


@pytest.mark.parametrize("flatten", [flatten_role_colon, flatten_role_tags])
def test_seed_round2_routes_by_prefix_after_round1(
    flatten: Callable[[list[dict[str, str]]], str], caplog: pytest.LogCaptureFixture
) -> None:
    rounds = [json.loads((FIXTURES / f"prefix-round{i}.json").read_text()) for i in (1, 2)]
    scorer, flt = build()
    pods = [cand(f"pod-{i}") for i in range(5)]

    first = SchedulingContext(
        LLMRequest("r1", rounds[0]["model"], rounds[0]["model"], flatten(rounds[0]["messages"]))
    )
    assert flt.filter(first, pods) == pods  # nothing cached yet
    scorer.pre_request(first, pods[2].endpoint)

    second = SchedulingContext(
        LLMRequest("r2", rounds[1]["model"], rounds[1]["model"], flatten(rounds[1]["messages"]))
    )
    with caplog.at_level(logging.INFO, logger="scorers.prefix_affinity_filter"):
        kept = flt.filter(second, pods)
    ratio = scorer.match_ratios(second, pods)["pod-2"]
    # 6 of round 2's 11 full blocks were left on pod-2 by round 1 with either flattening (GIE logs ~0.54).
    assert (scorer.matched_blocks(second), scorer.total_blocks(second)) == ({"pod-2": 6}, 11)
    assert 0.5 < ratio < 0.6
    assert [k.name for k in kept] == ["pod-2"]
    assert 'Do prefix-aware routing! request r2 "matching ratio": " 0.55 > 0.50"' in caplog.text


def conversation_scheduler(pods: int = 4) -> tuple[Datastore, Scheduler]:
    ds = Datastore()
    ds.set_endpoints([Endpoint(f"pod-{i}", "127.0.0.1", 8000 + i) for i in range(pods)])
    for i in range(pods):
        ds.update_metrics(f"pod-{i}", MetricsSnapshot(0, i, 0.1, scraped_at=time.monotonic()))
    deps = PluginDeps(ds)
    scorer = prefix_cache_scorer.factory("prefix-cache-scorer", {}, deps)
    deps.plugins[scorer.name] = scorer
    flt = prefix_affinity_filter.factory("affinity", {}, deps)
    profile = assemble_profile(
        "default",
        [(flt, 0.0), (scorer, 0.0), (LeastRequestScorer(), 1.0), (MaxScorePicker(), 0.0)],
        prefix_scorer=scorer.name,
    )
    return ds, Scheduler(ds, profile)


def send(scheduler: Scheduler, result: SchedulingResult) -> None:
    """What the director does before forwarding: run the profile's PreRequest hooks."""
    for hook in scheduler.profile(result.profile).pre_requests:
        hook.pre_request(result.context, result.endpoint)


def refused(scheduler: Scheduler, result: SchedulingResult) -> None:
    report = AttemptReport(result.endpoint, error="connect_failed")
    for hook in scheduler.profile(result.profile).request_failures:
        hook.request_failed(result.context, report)


def test_scheduler_routes_a_conversation_to_the_pod_that_served_it() -> None:
    ds, scheduler = conversation_scheduler()
    first = scheduler.schedule(LLMRequest("r1", MODEL, MODEL, blocks(6)))
    assert first.endpoint.name == "pod-0"  # least loaded
    send(scheduler, first)
    ds.update_metrics(
        "pod-0", MetricsSnapshot(3, 3, 0.1, scraped_at=time.monotonic())
    )  # now the busiest, not saturated
    second = scheduler.schedule(LLMRequest("r2", MODEL, MODEL, blocks(6) + blocks(4, seed="q")))
    assert second.endpoint.name == "pod-0"
    assert second.candidates_after_filters == ["pod-0"]
    assert second.prefix_match_ratio == 0.6


def test_after_a_refused_attempt_and_relaxed_retry_the_index_names_the_pod_that_served() -> None:
    _, scheduler = conversation_scheduler()
    send(scheduler, scheduler.schedule(LLMRequest("r1", MODEL, MODEL, blocks(6))))  # pod-0 holds 6 blocks
    req = LLMRequest("r2", MODEL, MODEL, blocks(6) + blocks(4, seed="q"))
    first = scheduler.schedule(req)
    assert first.candidates_after_filters == ["pod-0"]  # prefix-routed
    send(scheduler, first)
    refused(scheduler, first)  # pod-0 never answered: its 4 new blocks are taken back
    retry = scheduler.schedule(req, excluded={"pod-0"}, relax_affinity=True, context=first.context)
    assert retry.endpoint.name == "pod-1"  # least loaded of the rest
    send(scheduler, retry)

    follow_up = scheduler.schedule(
        LLMRequest("r3", MODEL, MODEL, blocks(6) + blocks(4, seed="q") + blocks(2, seed="r"))
    )
    assert follow_up.endpoint.name == "pod-1"
    scorer = scheduler.profile().scorers[0].scorer
    assert isinstance(scorer, PrefixCacheScorer)
    assert scorer.matched_blocks(follow_up.context) == {"pod-0": 6, "pod-1": 10}  # pod-0 kept only its own
    assert follow_up.prefix_match_ratio == pytest.approx(10 / 12)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_prefix_routed_lines_are_rate_limited_and_count_what_was_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    scorer, _ = build()
    flt = PrefixAffinityFilter("affinity", scorer, clock=clock)
    pod = cand("a")
    scorer.pre_request(ctx(blocks(3)), pod.endpoint)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "Do prefix-aware routing!" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="scorers.prefix_affinity_filter"):
        for _ in range(100):  # 100 decisions within one instant: a burst of 20 is logged
            assert flt.filter(ctx(blocks(3)), [pod]) == [pod]
        assert len(lines()) == 20
        clock.now += 0.5  # refills 10 lines
        for _ in range(30):
            flt.filter(ctx(blocks(3)), [pod])
        logged = lines()
        assert len(logged) == 30
        assert logged[20].endswith("(80 similar lines suppressed)")
        assert not any("suppressed" in line for line in logged[21:])
        clock.now += 10.0  # a quiet spell refills only up to the burst
        for _ in range(25):
            flt.filter(ctx(blocks(3)), [pod])
        assert len(lines()) == 50
        assert lines()[30].endswith("(20 similar lines suppressed)")


def test_decisions_without_prefix_routing_stay_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    _, flt = build()
    with caplog.at_level(logging.INFO, logger="scorers.prefix_affinity_filter"):
        flt.filter(ctx(blocks(3, seed="cold")), [cand("a")])
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger="scorers.prefix_affinity_filter"):
        flt.filter(ctx(blocks(3, seed="cold")), [cand("a")])
    assert "No prefix-aware routing" in caplog.text


def test_log_rate_limiter_token_bucket() -> None:
    clock = FakeClock()
    limit = LogRateLimiter(per_second=2.0, burst=2.0, clock=clock)
    assert [limit.acquire() for _ in range(4)] == [0, 0, None, None]
    clock.now += 0.25  # half a token
    assert limit.acquire() is None
    clock.now += 0.25
    assert limit.acquire() == 3
    with pytest.raises(ValueError):
        LogRateLimiter(per_second=0)
