"""Calibrating the prefix index's LRU capacity from the cached tokens the pods report (prefix_capacity)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest

from epp.datastore import Datastore, Endpoint, EndpointEvent, MetricsSnapshot
from epp.scheduling.plugins import PluginDeps
from epp.scheduling.types import AttemptReport, Candidate, LLMRequest, SchedulingContext
from scorers import prefix_capacity
from scorers.prefix_cache_scorer import PrefixCacheScorer, factory
from scorers.prefix_capacity import GAIN, MIN_FACTOR, MIN_SUM_REQUESTS, PROBE, PrefixCapacity
from scorers.prefix_index import PrefixIndex

MODEL = "llama"
TOKENS_PER_BLOCK = 16  # a 64-character index block at the scorer's 4 characters per token


def snap(t: float, hits: float | None = None, queries: float | None = None) -> MetricsSnapshot:
    # 16 tokens x 100 blocks = 1,600 tokens = 6,400 characters: an LRU of 100 index blocks.
    return MetricsSnapshot(
        waiting=0,
        running=0,
        kv_cache_usage=0.0,
        block_size=16,
        num_gpu_blocks=100,
        process_start_time=1.0,
        scraped_at=t,
        prefix_cache_hits=hits,
        prefix_cache_queries=queries,
    )


def prompt(user: int, blocks: int = 9) -> str:
    return "".join(f"user{user}-{i:04d}".ljust(64, ".") for i in range(blocks))


def baselined() -> PrefixCapacity:
    """Calibration that has seen pod a's first scrape (its counters' baseline)."""
    cap = PrefixCapacity()
    cap.sent("a", 0.0, 1000)
    cap.scraped("a", snap(1.0, hits=0.0, queries=0.0))
    return cap


def test_an_over_prediction_shrinks_the_factor_in_proportion_to_the_error() -> None:
    cap = PrefixCapacity()
    cap.sent("a", 900.0, 1000)
    assert cap.answered("a", 0.9, 250, 25)  # predicted 90% cached, the pod had 10%
    assert cap.factor("a") == pytest.approx(math.exp(-GAIN * 0.8))


def test_accurate_answers_probe_back_up_and_the_factor_stays_within_its_bounds() -> None:
    cap = PrefixCapacity()
    cap.sent("a", 900.0, 1000)
    for _ in range(100):
        cap.answered("a", 1.0, 100, 0)
    assert cap.factor("a") == MIN_FACTOR
    assert cap.answered("a", 0.9, 100, 88)  # within the tolerance: a probe upwards
    assert cap.factor("a") == pytest.approx(MIN_FACTOR * (1 + PROBE))
    for _ in range(1000):
        cap.answered("a", 0.5, 100, 50)
    assert cap.factor("a") == 1.0
    assert not cap.answered("a", 0.5, 100, 50)  # at the ceiling: nothing moves


def test_cold_prompts_and_unknown_pods_change_nothing() -> None:
    cap = PrefixCapacity()
    assert not cap.answered("a", 0.9, 100, 0)  # never sent anything: no state
    cap.sent("a", 0.0, 1000)
    assert not cap.answered("a", 0.0, 100, 0)
    assert cap.factor("a") == 1.0


def test_scrape_windows_compare_the_predictions_sent_with_the_counters_growth() -> None:
    cap = PrefixCapacity()
    cap.sent("a", 0.0, 1000)
    assert not cap.scraped("a", snap(1.0, hits=0.0, queries=0.0))  # the first scrape is the baseline
    for _ in range(MIN_SUM_REQUESTS):
        cap.sent("a", 900.0, 1000)  # each predicted 90% cached
    assert not cap.scraped("a", snap(2.0, hits=0.0, queries=0.0))  # not scheduled yet: the window stays open
    assert cap.scraped("a", snap(3.0, hits=125.0, queries=1250.0))  # the pod had 10%
    assert cap.factor("a") == pytest.approx(math.exp(-GAIN * 0.8 * MIN_SUM_REQUESTS))
    assert not cap.scraped("a", snap(3.0, hits=125.0, queries=1250.0))  # the same scrape again
    # Counters that went back (a restart) only set a new baseline.
    cap.sent("a", 900.0, 1000)
    before = cap.factor("a")
    assert not cap.scraped("a", snap(4.0, hits=0.0, queries=10.0))
    assert cap.factor("a") == before


def test_too_few_requests_in_the_sums_move_nothing() -> None:
    cap = baselined()
    cap.sent("a", 900.0, 1000)
    assert not cap.scraped("a", snap(2.0, hits=0.0, queries=250.0))
    assert cap.factor("a") == 1.0


def late_counts(cap: PrefixCapacity, windows: int) -> float:
    """Each window epp sends a cold and a warm (95% cached) request; every third window the pod schedules
    the warm one after the scrape, so it counts it in the next window. Returns the factor at the end."""
    cap.sent("a", 0.0, 1000)
    cap.scraped("a", snap(0.0, hits=0.0, queries=0.0))
    hits = queries = 0.0
    late = False
    for window in range(1, windows + 1):
        cap.sent("a", 0.0, 1000)
        cap.sent("a", 950.0, 1000)
        counted = 1 + (0 if window % 3 == 0 else 1) + (1 if late else 0)  # cold, this warm, a late warm
        late = window % 3 == 0
        queries += 250.0 * counted
        hits += 237.5 * (counted - 1)
        cap.scraped("a", snap(float(window), hits=hits, queries=queries))
    return cap.factor("a")


def test_a_request_the_pod_counts_a_window_late_is_not_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    assert late_counts(PrefixCapacity(), 60) == 1.0
    # Window by window, a late window looks like half the prediction missed and the next like a gain the
    # ceiling cuts off: the factor would ratchet down.
    monkeypatch.setattr(prefix_capacity, "WINDOW_KEEP", 0.0)
    monkeypatch.setattr(prefix_capacity, "MIN_SUM_REQUESTS", 1)
    assert late_counts(PrefixCapacity(), 60) < 0.8


def test_a_window_counts_as_at_most_max_window_weight_answers() -> None:
    cap = baselined()
    for _ in range(50):
        cap.sent("a", 1000.0, 1000)
    cap.scraped("a", snap(2.0, hits=500.0, queries=1000.0))
    assert cap.factor("a") == pytest.approx(math.exp(-GAIN * 0.5 * prefix_capacity.MAX_WINDOW_WEIGHT))


def test_per_answer_reports_make_scrape_windows_moot() -> None:
    cap = baselined()
    for _ in range(10):
        cap.sent("a", 1000.0, 1000)
    cap.answered("a", 1.0, 250, 250)  # accurate: a probe (already at 1)
    assert not cap.scraped("a", snap(2.0, hits=0.0, queries=2500.0))  # would say 0% cached: ignored
    assert cap.factor("a") == 1.0


@dataclass
class CyclingUsers:
    """Users sending the same 9-block prompt in turn to one pod that holds fewer blocks than its KV size
    suggests (a fake pod's cache: a PrefixIndex LRU of `pod_blocks`), through a prefix-cache-scorer whose
    LRU is sized from the pod's KV (100 blocks)."""

    plugin: PrefixCacheScorer
    users: int = 10
    pod_blocks: int = 80
    per_answer: bool = True

    def __post_init__(self) -> None:
        self.pod = PrefixIndex(self.pod_blocks)
        self.hits = self.queries = 0.0
        self.t = 1.0

    def run(self, rounds: int) -> list[tuple[float, float]]:
        """(predicted, actual) cached fraction of every request."""
        endpoint = Endpoint("a", "127.0.0.1", 8000)
        seen = []
        for _ in range(rounds):
            for user in range(self.users):
                self.t += 1.0
                metrics = snap(self.t, self.hits, self.queries)
                c = SchedulingContext(LLMRequest(f"r{user}", MODEL, MODEL, prompt(user)))
                predicted = self.plugin.score(c, [Candidate(endpoint, metrics, 0)])["a"]
                self.plugin.pre_request(c, endpoint)
                hashes = self.plugin.cycle_match(c).hashes
                cached = self.pod.match(hashes).get("a", 0) * TOKENS_PER_BLOCK
                self.pod.insert("a", hashes)
                tokens = len(hashes) * TOKENS_PER_BLOCK
                self.hits += cached
                self.queries += tokens
                report = AttemptReport(endpoint, status=200, responded=True, prompt_tokens=tokens)
                if self.per_answer:
                    report = replace(report, cached_prompt_tokens=cached)
                self.plugin.response_complete(c, report)
                seen.append((predicted, cached / tokens))
        return seen


def mean_error(seen: list[tuple[float, float]]) -> float:
    return sum(abs(p - a) for p, a in seen) / len(seen)


@pytest.mark.parametrize("per_answer", [True, False], ids=["per-answer", "scrape-windows"])
def test_the_lru_cliff_is_learned_from_the_pods_reports(per_answer: bool) -> None:
    # 10 users x 9 blocks = 90: fits the index's 100 blocks, not the pod's 80, so the pod (LRU, in turn)
    # misses every request while an uncalibrated index predicts a hit for every one.
    uncalibrated = CyclingUsers(PrefixCacheScorer(calibrate_lru=False), per_answer=per_answer).run(30)
    assert mean_error(uncalibrated[-100:]) > 0.9
    calibrated = CyclingUsers(PrefixCacheScorer(), per_answer=per_answer)
    seen = calibrated.run(30)
    assert mean_error(seen[-100:]) < 0.05
    assert calibrated.plugin.index.capacity("a") < 90


def test_a_pod_that_holds_what_the_index_says_keeps_its_full_capacity() -> None:
    users = CyclingUsers(PrefixCacheScorer(), users=8, pod_blocks=100)  # 72 blocks fit both
    seen = users.run(20)
    assert mean_error(seen[-50:]) < 0.05
    assert users.plugin.index.capacity("a") == 100


def test_a_restart_forgets_the_factor_and_the_switch_turns_it_off() -> None:
    ds = Datastore()
    plugin = factory("pc", {}, PluginDeps(ds))
    users = CyclingUsers(plugin)
    users.run(10)
    assert plugin.capacity is not None and plugin.capacity.factor("a") < 1.0
    plugin.on_endpoint_event(EndpointEvent.RESTARTED, Endpoint("a", "127.0.0.1", 8000))
    assert plugin.capacity.factor("a") == 1.0
    assert factory("off", {"calibrateLRU": False}, PluginDeps(ds)).capacity is None
    assert factory("fixed", {"autoSizeLRU": False}, PluginDeps(ds)).capacity is None
