"""Token-aware prefix affinity, plugin by plugin: the per-pod prefill backlog, the online prefill-rate
estimate, the affinity bound and the hot-prefix spread (the strategy as a whole: *_strategy.py)."""

from __future__ import annotations

import logging
import random
import re

import pytest

from epp.datastore import Datastore, Endpoint, EndpointEvent
from epp.scheduling.plugins import PluginConfigError, PluginDeps
from epp.scheduling.types import AttemptReport, LLMRequest, SchedulingContext
from scorers.hot_prefixes import HotPrefixes
from scorers.prefill_affinity_filter import DECISION_KEY, PrefillAffinityFilter
from scorers.prefill_affinity_filter import factory as affinity_factory
from scorers.prefill_load_scorer import PrefillLoadScorer
from scorers.prefill_load_scorer import factory as load_factory
from scorers.prefill_rate import MAX_RATE, MIN_RATE, PrefillRateEstimator
from scorers.prefix_cache_scorer import PrefixCacheScorer
from tests.test_sched_support import cand, request

BLOCK = 64
SHARED = "You are a helpful assistant. " * 280  # 8,120 chars: ~2,000 tokens at 4 chars a token


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ep(name: str) -> Endpoint:
    return Endpoint(name, "127.0.0.1", 8000)


def plugins(clock: FakeClock, prior_rate: float = 4000.0) -> tuple[PrefixCacheScorer, PrefillLoadScorer]:
    prefix = PrefixCacheScorer(block_size=BLOCK, auto_size_lru=False)
    return prefix, PrefillLoadScorer(prefix=prefix, prior_rate=prior_rate, clock=clock)


def streamed(prompt: str, request_id: str = "r") -> LLMRequest:
    req = request(prompt, request_id=request_id)
    req.body = {"stream": True}
    return req


def send(prefix: PrefixCacheScorer, load: PrefillLoadScorer, req: LLMRequest, pod: str) -> SchedulingContext:
    """Run the pre-request hooks in the strategy's order (the prefix index learns after the load is taken)."""
    ctx = SchedulingContext(req)
    load.pre_request(ctx, ep(pod))
    prefix.pre_request(ctx, ep(pod))
    return ctx


# -- accounting ---------------------------------------------------------------------------------------------
def test_pre_request_queues_the_uncached_tokens_and_first_token_releases_them() -> None:
    clock = FakeClock()
    prefix, load = plugins(clock)
    first = send(prefix, load, streamed(SHARED + "first question"), "a")
    assert load.pending_tokens("a") == pytest.approx(len(SHARED + "first question") / 4)
    # Same prefix, same pod: only the part after the cached blocks is new work.
    question = "second question, a little longer than the first one"
    second = send(prefix, load, streamed(SHARED + question), "a")
    cached = (len(SHARED) // BLOCK) * BLOCK
    expected_second = (len(SHARED + question) - cached) / 4
    assert load.backlog.tokens("a", clock.now, 1.0) == pytest.approx(
        len(SHARED + "first question") / 4 + expected_second
    )
    assert load.pending_tokens("b") == 0.0
    # The second one's first token: first come first served, so the first is prefilled too.
    load.first_token(second, ep("a"), 0.5)
    assert load.pending_tokens("a") == 0.0
    # A late first token (or end) of the first changes nothing.
    load.first_token(first, ep("a"), 0.6)
    load.response_complete(first, AttemptReport(ep("a"), status=200, responded=True))
    assert load.pending_tokens("a") == 0.0


def test_completion_and_failure_before_a_first_token_take_the_tokens_back() -> None:
    clock = FakeClock()
    prefix, load = plugins(clock)
    done = send(prefix, load, streamed("x" * 4000, "done"), "a")
    failed = send(prefix, load, streamed("y" * 8000, "failed"), "a")
    kept = send(prefix, load, streamed("z" * 400, "kept"), "a")
    assert load.pending_tokens("a") == pytest.approx(3100)
    load.response_complete(done, AttemptReport(ep("a"), status=200, responded=True))
    assert load.pending_tokens("a") == pytest.approx(2100)
    load.request_failed(failed, AttemptReport(ep("a"), responded=False, error="reset"))
    assert load.pending_tokens("a") == pytest.approx(100)
    load.request_failed(failed, AttemptReport(ep("a"), responded=False, error="reset"))  # twice: no-op
    assert load.pending_tokens("a") == pytest.approx(100)
    load.response_complete(kept, AttemptReport(ep("a"), status=200, responded=True))
    assert load.pending_tokens("a") == 0.0


def test_a_retry_moves_the_tokens_to_the_pod_that_serves() -> None:
    clock = FakeClock()
    prefix, load = plugins(clock)
    other = send(prefix, load, streamed("o" * 2000, "other"), "b")  # queued on b before the retry
    ctx = send(prefix, load, streamed("p" * 4000), "a")
    assert (load.pending_tokens("a"), load.pending_tokens("b")) == pytest.approx((1000, 500))
    load.request_failed(ctx, AttemptReport(ep("a"), responded=False, error="connect_failed"))
    assert load.pending_tokens("a") == 0.0
    # The retry reuses the cycle state; its attempt is counted on b, after b's earlier request.
    load.pre_request(ctx, ep("b"))
    assert load.pending_tokens("b") == pytest.approx(1500)
    # A stale event for the failed pod does not touch b.
    load.first_token(ctx, ep("a"), 0.1)
    assert load.pending_tokens("b") == pytest.approx(1500)
    load.first_token(ctx, ep("b"), 0.3)
    assert load.pending_tokens("b") == 0.0  # b's earlier request was ahead of it: prefilled too
    load.response_complete(other, AttemptReport(ep("b"), status=200, responded=True))
    assert load.pending_tokens("b") == 0.0


def test_a_backlog_without_end_events_drains_at_the_pods_rate() -> None:
    clock = FakeClock()
    prefix, load = plugins(clock, prior_rate=1000.0)
    send(prefix, load, streamed("h" * 4000, "handed-off-1"), "a")  # e.g. POST /pick: no event ever comes
    send(prefix, load, streamed("k" * 2000, "handed-off-2"), "a")
    assert load.pending_tokens("a") == pytest.approx(1500)
    clock.now += 0.4  # 400 tokens at 1,000 tokens/s
    assert load.pending_tokens("a") == pytest.approx(1100)
    clock.now += 10.0
    assert load.pending_tokens("a") == 0.0
    assert load.backlog._pods["a"].entries == {}  # drained entries are gone, nothing grows


def test_a_restarted_or_removed_pod_forgets_its_backlog() -> None:
    clock = FakeClock()
    prefix, load = plugins(clock)
    send(prefix, load, streamed("q" * 4000), "a")
    load.rates.observe("a", 1000, 0.3)
    load.on_endpoint_event(EndpointEvent.RESTARTED, ep("a"))
    assert load.pending_tokens("a") == 0.0
    assert load.rates.model("a").samples == 1  # same hardware after a restart
    load.on_endpoint_event(EndpointEvent.REMOVED, ep("a"))
    assert load.rates.model("a").samples == 0


def test_chars_per_token_follows_the_pods_usage() -> None:
    clock = FakeClock()
    prefix, load = plugins(clock)
    for i in range(60):
        ctx = send(prefix, load, streamed(f"{i} " + "w" * 3000), "a")
        load.response_complete(ctx, AttemptReport(ep("a"), status=200, responded=True, prompt_tokens=1000))
    assert load.chars_per_token == pytest.approx(3.0, rel=0.02)


# -- the rate estimate --------------------------------------------------------------------------------------
def samples_to_converge(true_rate: float, overhead: float, seed: int, outliers: float = 0.05) -> int | None:
    """Samples until the estimate is within 20% of `true_rate` and stays there (noise +-10%, some spikes)."""
    rng = random.Random(seed)
    est = PrefillRateEstimator()  # default prior, no hint of the true rate
    since: int | None = None
    for n in range(1, 201):
        work = rng.uniform(100, 4000)
        ttft = (overhead + work / true_rate) * rng.uniform(0.9, 1.1)
        if rng.random() < outliers:
            ttft += rng.uniform(0.2, 1.0)  # a LoRA load, a GC pause
        est.observe("pod", work, ttft)
        within = abs(est.rate("pod") - true_rate) <= 0.2 * true_rate
        since = (since or n) if within else None
    return since


@pytest.mark.parametrize(
    ("true_rate", "overhead"),
    [(4_000.0, 0.028), (22_000.0, 0.0065), (10_000.0, 0.0016), (500.0, 0.1)],
)
def test_rate_estimate_converges_within_20_percent_from_any_hardware(
    true_rate: float, overhead: float
) -> None:
    counts = [samples_to_converge(true_rate, overhead, seed) for seed in range(5)]
    assert all(c is not None and c <= 40 for c in counts), counts


def test_rate_estimate_stays_in_bounds_and_ignores_garbage() -> None:
    est = PrefillRateEstimator()
    for _ in range(50):
        est.observe("fast", 100_000, 0.0)  # impossible: infinitely fast
        est.observe("slow", 10, 1000.0)  # impossible: stuck
        est.observe("slow", float("nan"), 1.0)
        est.observe("slow", 100, -1.0)
    assert MIN_RATE <= est.rate("slow") <= MAX_RATE
    assert MIN_RATE <= est.rate("fast") <= MAX_RATE
    assert est.model("fast").overhead_s >= 0.0


def test_rate_estimate_tracks_a_pod_that_slows_down() -> None:
    est = PrefillRateEstimator()
    rng = random.Random(3)
    for _ in range(60):
        work = rng.uniform(200, 3000)
        est.observe("pod", work, 0.02 + work / 8000)
    assert est.rate("pod") == pytest.approx(8000, rel=0.1)
    for _ in range(80):
        work = rng.uniform(200, 3000)
        est.observe("pod", work, 0.02 + work / 2000)
    assert est.rate("pod") == pytest.approx(2000, rel=0.1)


def test_a_new_pod_starts_from_the_fleets_estimate() -> None:
    est = PrefillRateEstimator(prior_rate=5000)
    rng = random.Random(4)
    for pod in ("a", "b", "c"):
        for _ in range(20):
            work = rng.uniform(200, 3000)
            est.observe(pod, work, 0.01 + work / 12_000)
    assert est.rate("new") == pytest.approx(12_000, rel=0.1)


def test_only_streamed_first_tokens_teach_the_rate_from_the_attempts_own_send() -> None:
    clock = FakeClock()
    prefix, load = plugins(clock, prior_rate=4000.0)
    whole = request("n" * 8000, request_id="whole")  # not streamed: its first token is the whole answer
    ctx = send(prefix, load, whole, "a")
    clock.now += 5.0
    load.first_token(ctx, ep("a"), 5.0)
    assert load.rates.model("a").samples == 0
    # A streamed request retried on b after 3 s on a: b's sample is its own 0.5 s, not the 3.5 s total.
    req = streamed("s" * 8000)
    ctx = send(prefix, load, req, "a")
    clock.now += 3.0
    load.request_failed(ctx, AttemptReport(ep("a"), responded=False, error="reset"))
    load.pre_request(ctx, ep("b"))
    clock.now += 0.5
    load.first_token(ctx, ep("b"), 3.5)
    model = load.rates.model("b")
    assert model.samples == 1
    assert model.predict(2000) == pytest.approx(0.5, rel=0.05)
    assert load.rates.model("a").samples == 0


# -- the affinity bound -------------------------------------------------------------------------------------
def affinity(
    clock: FakeClock, wait_bound: float = 0.25
) -> tuple[PrefixCacheScorer, PrefillLoadScorer, PrefillAffinityFilter]:
    prefix, load = plugins(clock, prior_rate=4000.0)
    return prefix, load, PrefillAffinityFilter("f", prefix, load, wait_bound=wait_bound)


def test_affinity_holds_within_the_bound_and_breaks_past_it() -> None:
    clock = FakeClock()
    prefix, load, filt = affinity(clock)
    # The cold pods decode something (not idle, which would break affinity as soon as they are quicker).
    pods = [cand("warm"), cand("cold-1", running=1), cand("cold-2", running=1)]
    send(prefix, load, streamed(SHARED + "user 0"), "warm")
    shared_tokens = len(SHARED) / 4
    kept_until = None
    for i in range(1, 40):
        ctx = SchedulingContext(streamed(SHARED + f"user {i} asks"))
        kept = [c.name for c in filt.filter(ctx, pods)]
        decision = ctx.cycle.data[DECISION_KEY]
        if kept != ["warm"]:
            kept_until = i
            assert kept == ["warm", "cold-1", "cold-2"] and decision["broken"]
            # The bound: the warm pod's wait is past 1.25 x a cold pod's (which must prefill all of it).
            assert decision["warm_wait_s"] > 1.25 * decision["cold_wait_s"]
            break
        assert decision["applied"] and decision["warm_wait_s"] <= 1.25 * decision["cold_wait_s"]
        send(prefix, load, ctx.request, "warm")  # back to back: no first token yet
    assert kept_until is not None
    # It held while the warm pod's backlog was under about a quarter of the shared prefix's own prefill.
    backlog = load.pending_tokens("warm")
    assert 1.2 * shared_tokens < backlog < 1.4 * shared_tokens
    # First tokens come back: the backlog clears and affinity holds again.
    load.backlog.forget("warm")
    ctx = SchedulingContext(streamed(SHARED + "a later user"))
    assert [c.name for c in filt.filter(ctx, pods)] == ["warm"]


def test_routed_and_broken_decisions_log_at_info_in_gies_shape(caplog: pytest.LogCaptureFixture) -> None:
    clock, filter_clock = FakeClock(), FakeClock()
    prefix, load = plugins(clock)
    filt = PrefillAffinityFilter("f", prefix, load, clock=filter_clock)
    pods = [cand("warm"), cand("cold", running=1)]
    send(prefix, load, streamed(SHARED + "user 0"), "warm")
    with caplog.at_level(logging.INFO, logger="scorers.prefill_affinity_filter"):
        for i in range(1, 200):
            filter_clock.now += 1.0  # under the log's rate limit; the backlog's clock stands still
            ctx = SchedulingContext(streamed(SHARED + f"user {i}", request_id=f"r{i}"))
            if [c.name for c in filt.filter(ctx, pods)] != ["warm"]:
                break
            send(prefix, load, ctx.request, "warm")
    lines = [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    # GIE's line (the seed checks grep it), with this filter's estimates after the pods it keeps.
    routed = r'Do prefix-aware routing! request r1 "matching ratio": " [01]\.\d\d > 0\.50" keeping '
    assert re.fullmatch(
        routed + r"\['warm'\] \(estimated wait \d+\.\d{3}s, other pods \d+\.\d{3}s\)", lines[0]
    )
    assert len(lines) > 2 and lines[-1].startswith(f"Prefix affinity broken: request r{i} matching ratio ")


def test_a_larger_bound_holds_affinity_longer() -> None:
    held = {}
    for bound in (0.0, 0.25, 1.0):
        clock = FakeClock()
        prefix, load, filt = affinity(clock, wait_bound=bound)
        pods = [cand("warm"), cand("cold", running=1)]
        send(prefix, load, streamed(SHARED + "user 0"), "warm")
        n = 0
        while n < 200:
            ctx = SchedulingContext(streamed(SHARED + f"user {n + 1}"))
            if [c.name for c in filt.filter(ctx, pods)] != ["warm"]:
                break
            send(prefix, load, ctx.request, "warm")
            n += 1
        held[bound] = n
    assert held[0.0] < held[0.25] < held[1.0], held


def test_an_idle_pod_that_answers_sooner_breaks_affinity() -> None:
    clock = FakeClock()
    prefix, load, filt = affinity(clock)
    send(prefix, load, streamed(SHARED + "user 0"), "warm")  # its prefill is still queued
    # A second new user: behind the first on the warm pod it waits longer than a whole prefill on the idle
    # pod (within the 25% bound, so a busy cold pod would not break affinity).
    ctx = SchedulingContext(streamed(SHARED + "user 1"))
    assert [c.name for c in filt.filter(ctx, [cand("warm"), cand("idle")])] == ["warm", "idle"]
    decision = ctx.cycle.data[DECISION_KEY]
    assert decision["broken_by"] == "idle" and decision["cold_wait_s"] < decision["warm_wait_s"]
    ctx = SchedulingContext(streamed(SHARED + "user 1"))
    assert [c.name for c in filt.filter(ctx, [cand("warm"), cand("cold", running=1)])] == ["warm"]
    ctx = SchedulingContext(streamed(SHARED + "user 1"))
    assert [c.name for c in filt.filter(ctx, [cand("warm"), cand("sent-to", in_flight=1)])] == ["warm"]
    off = PrefillAffinityFilter("off", prefix, load, idle_pods_break_affinity=False)
    ctx = SchedulingContext(streamed(SHARED + "user 1"))
    assert [c.name for c in off.filter(ctx, [cand("warm"), cand("idle")])] == ["warm"]
    # Once the warm pod's queue is done it is the quicker one again: affinity holds.
    load.backlog.forget("warm")
    ctx = SchedulingContext(streamed(SHARED + "user 1"))
    assert [c.name for c in filt.filter(ctx, [cand("warm"), cand("idle")])] == ["warm"]


def test_saturated_or_weak_matches_are_not_prefix_routed() -> None:
    clock = FakeClock()
    prefix, load, filt = affinity(clock)
    send(prefix, load, streamed(SHARED + "user 0"), "warm")
    ctx = SchedulingContext(streamed(SHARED + "user 1"))
    saturated = [cand("warm", waiting=9), cand("cold")]
    assert [c.name for c in filt.filter(ctx, saturated)] == ["warm", "cold"]
    ctx = SchedulingContext(streamed("something else entirely " * 40))
    assert [c.name for c in filt.filter(ctx, [cand("warm"), cand("cold")])] == ["warm", "cold"]
    assert ctx.cycle.data[DECISION_KEY]["applied"] is False


def test_scores_favour_the_shortest_estimated_wait() -> None:
    clock = FakeClock()
    prefix, load = plugins(clock)
    send(prefix, load, streamed("busy " * 2000), "busy")
    ctx = SchedulingContext(streamed("fresh prompt " * 100))
    scores = load.score(ctx, [cand("busy"), cand("idle")])
    assert scores["idle"] == 1.0
    assert 0.0 < scores["busy"] < 0.5


def test_config_errors_name_the_missing_references() -> None:
    deps = PluginDeps(datastore=Datastore())
    with pytest.raises(PluginConfigError, match="'prefixPluginRef': no plugin named 'prefix-cache-scorer'"):
        load_factory("load", {}, deps)
    deps.plugins["prefix-cache-scorer"] = PrefixCacheScorer()
    load_factory("load", {"priorTokensPerSecond": 8000}, deps)
    with pytest.raises(PluginConfigError, match="'loadPluginRef': no plugin named 'prefill-load-scorer'"):
        affinity_factory("f", {}, deps)
    deps.plugins["prefill-load-scorer"] = deps.plugins["prefix-cache-scorer"]
    with pytest.raises(PluginConfigError, match="is a PrefixCacheScorer, not a 'prefill-load-scorer'"):
        affinity_factory("f", {}, deps)
    with pytest.raises(PluginConfigError, match="parameter 'waitBound'"):
        affinity_factory("f", {"waitBound": -1}, deps)
    with pytest.raises(PluginConfigError, match="moved to"):
        affinity_factory("f", {"queueDepthThreshold": 3}, deps)


def test_a_hot_prefix_spreads_to_an_idle_pod_when_the_warm_pods_are_busy() -> None:
    clock = FakeClock()
    prefix, load, filt = affinity(clock)
    send(prefix, load, streamed(SHARED + "user 0"), "warm")
    load.backlog.forget("warm")  # its first token came back
    # The warm pod still prefills 1,000 tokens of another prompt: a copy to the idle pod (~2,000 tokens)
    # would wait about twice as long, within hotSpreadWaitRatio's 4.
    send(prefix, load, streamed("another prompt " * 267), "warm")
    busy_warm = [cand("warm", in_flight=2, running=2), cand("idle"), cand("busy", in_flight=1, running=1)]
    kept = []
    for i in range(1, 5):  # new users behind one system prompt: the prefix gets hot
        ctx = SchedulingContext(streamed(SHARED + f"new user {i}"))
        kept.append([c.name for c in filt.filter(ctx, busy_warm)])
    assert kept[:2] == [["warm"], ["warm"]]  # not hot yet: affinity holds (the wait bound is far)
    assert kept[2:] == [["idle"], ["idle"]]  # hot, warm pod busy: copy the prefix to the idle pod
    assert ctx.cycle.data[DECISION_KEY]["spread"] is True
    # With nothing queued on the warm pod the copy would wait ~25 times longer: not worth it.
    load.backlog.forget("warm")
    ctx = SchedulingContext(streamed(SHARED + "new user 5"))
    assert [c.name for c in filt.filter(ctx, busy_warm)] == ["warm"]
    assert ctx.cycle.data[DECISION_KEY].get("spread") is None
    send(prefix, load, streamed("another prompt " * 267), "warm")
    # A warm pod with nothing in flight keeps it, however hot the prefix.
    ctx = SchedulingContext(streamed(SHARED + "new user 9"))
    assert [c.name for c in filt.filter(ctx, [cand("warm"), cand("idle")])] == ["warm"]
    # A returning user's own history is not hot: it stays on its (busy) pod.
    history = SHARED + "returning user: " + "my earlier questions and answers. " * 40
    send(prefix, load, streamed(history), "warm")
    load.backlog.forget("warm")
    ctx = SchedulingContext(streamed(history + " and one more question"))
    assert [c.name for c in filt.filter(ctx, busy_warm)] == ["warm"]
    # hotPrefixRequests 0 turns the spreading off.
    send(prefix, load, streamed("another prompt " * 267), "warm")
    off = PrefillAffinityFilter("off", prefix, load, hot_prefix_requests=0)
    for i in range(5):
        ctx = SchedulingContext(streamed(SHARED + f"another user {i}"))
        assert [c.name for c in off.filter(ctx, busy_warm)] == ["warm"]


def test_hot_prefix_counts_decay_and_stay_bounded() -> None:
    hot = HotPrefixes(half_life_s=10.0, capacity=3)
    assert hot.touch(1, 0.0) == 1.0
    assert hot.touch(1, 0.0) == 2.0
    assert hot.touch(1, 10.0) == pytest.approx(2.0)  # 2 halved, plus this one
    for key in (2, 3, 4):
        hot.touch(key, 10.0)
    assert len(hot) == 3
    assert hot.touch(1, 10.0) == 1.0  # the least recently seen key was dropped


def test_the_estimate_learns_what_each_request_in_flight_costs() -> None:
    # Decode steps of the requests a pod already serves slow a new prefill down: 15 ms each here.
    est = PrefillRateEstimator()
    rng = random.Random(5)
    for _ in range(150):
        work, busy = rng.uniform(100, 4000), rng.randrange(0, 24)
        est.observe("pod", work, (0.02 + work / 4000 + 0.015 * busy) * rng.uniform(0.95, 1.05), busy)
    model = est.model("pod")
    assert model.rate == pytest.approx(4000, rel=0.2)
    assert model.s_per_request == pytest.approx(0.015, rel=0.25)
    assert model.predict(2000, 10) == pytest.approx(0.02 + 0.5 + 0.15, rel=0.1)
