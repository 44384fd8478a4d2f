"""What the request director relies on: lifecycle hooks in the profile, and retry scheduling (excluded
endpoints, relaxed affinity, a reused cycle context, the ranked fallback order)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from epp.datastore import Endpoint
from epp.scheduling.builder import build_scheduler
from epp.scheduling.plugins import (
    FirstToken,
    PluginConfigError,
    PreRequest,
    RequestFailed,
    ResponseComplete,
    ResponseStarted,
)
from epp.scheduling.profile import assemble_profile
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import (
    AttemptReport,
    Candidate,
    Criticality,
    NoEndpointError,
    SchedulingContext,
    ShedError,
)
from scorers.least_request_scorer import LeastRequestScorer
from scorers.max_score_picker import MaxScorePicker
from scorers.random_picker import RandomPicker
from tests.test_sched_framework import PODS, config, registry
from tests.test_sched_support import datastore, request, snap


class AllHooks:
    """Implements every lifecycle hook and nothing else."""

    def __init__(self, name: str = "hooks") -> None:
        self.name = name
        self.events: list[tuple[str, str]] = []

    def pre_request(self, ctx: SchedulingContext, endpoint: Endpoint) -> None:
        self.events.append(("pre_request", endpoint.name))

    def response_started(self, ctx: SchedulingContext, endpoint: Endpoint, status: int) -> None:
        self.events.append(("response_started", f"{endpoint.name} {status}"))

    def first_token(self, ctx: SchedulingContext, endpoint: Endpoint, ttft_s: float) -> None:
        self.events.append(("first_token", endpoint.name))

    def response_complete(self, ctx: SchedulingContext, report: AttemptReport) -> None:
        self.events.append(("response_complete", report.endpoint.name))

    def request_failed(self, ctx: SchedulingContext, report: AttemptReport) -> None:
        self.events.append(("request_failed", f"{report.endpoint.name} {report.error}"))


class Affine:
    """An affinity filter keeping only `keep`, and a plain filter counting its calls (by flag)."""

    def __init__(self, name: str, keep: str, affinity: bool) -> None:
        self.name = name
        self.keep = keep
        self.affinity = affinity
        self.calls = 0

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
        self.calls += 1
        return [c for c in candidates if c.name == self.keep]


def test_each_hook_role_is_assembled_and_a_hook_only_plugin_is_enough() -> None:
    hooks = AllHooks()
    for proto in (PreRequest, ResponseStarted, FirstToken, ResponseComplete, RequestFailed):
        assert isinstance(hooks, proto)
    profile = assemble_profile("p", [(hooks, 1.0), (RandomPicker(), 1.0)])
    assert profile.filters == [] and profile.scorers == []
    assert profile.pre_requests == [hooks]
    assert profile.response_started == [hooks]
    assert profile.first_tokens == [hooks]
    assert profile.response_completes == [hooks]
    assert profile.request_failures == [hooks]


def test_plugin_with_no_role_at_all_is_still_an_error() -> None:
    class Nothing:
        name = "nothing"

    with pytest.raises(PluginConfigError, match="'nothing' implements none of"):
        assemble_profile("p", [(Nothing(), 1.0), (RandomPicker(), 1.0)])


def test_attempt_report_defaults_mean_the_pod_never_answered() -> None:
    report = AttemptReport(Endpoint("a", "127.0.0.1", 1))
    assert (report.status, report.responded, report.error) == (None, False, None)


def scheduler_of(*plugins: tuple[Any, float], pods: dict[str, Any] | None = None) -> Scheduler:
    ds = datastore(PODS if pods is None else pods)
    return Scheduler(ds, assemble_profile("p", [*plugins, (MaxScorePicker(rng=random.Random(0)), 1.0)]))


def test_excluded_endpoints_are_removed_before_any_filter() -> None:
    seen: list[list[str]] = []

    class Spy:
        name = "spy"

        def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
            seen.append([c.name for c in candidates])
            return list(candidates)

    sched = scheduler_of((Spy(), 1.0))
    result = sched.schedule(request(), excluded={"a", "gone"})
    assert seen == [["b", "c"]]
    assert result.endpoint.name in {"b", "c"} and result.candidates_after_filters == ["b", "c"]
    with pytest.raises(NoEndpointError, match="excluding") as err:
        sched.schedule(request(), excluded=["a", "b", "c"])
    assert err.value.status == 503


def test_relax_affinity_skips_only_affinity_filters() -> None:
    affine = Affine("affine", keep="a", affinity=True)
    plain = Affine("plain", keep="b", affinity=False)
    sched = scheduler_of((affine, 1.0))
    assert sched.schedule(request()).endpoint.name == "a"
    relaxed = sched.schedule(request(), relax_affinity=True, excluded={"a"})
    assert relaxed.candidates_after_filters == ["b", "c"]
    assert affine.calls == 1  # skipped on the relaxed cycle
    strict = scheduler_of((plain, 1.0))
    assert strict.schedule(request(), relax_affinity=True).endpoint.name == "b"  # not an affinity filter


def test_relaxed_retry_still_sheds_on_saturation() -> None:
    cfg = config(
        [{"type": "saturation-filter"}, {"type": "max-score-picker"}],
        {"p": ["saturation-filter", "max-score-picker"]},
    )
    pods = {"a": snap(waiting=9), "b": snap(kv=0.95), "c": snap()}
    sched = build_scheduler(cfg, datastore(pods), registry(), random.Random(0))
    sheddable = request(criticality=Criticality.SHEDDABLE)
    with pytest.raises(ShedError):
        sched.schedule(sheddable, excluded={"c"}, relax_affinity=True)


def test_context_is_reused_across_a_retry() -> None:
    sched = scheduler_of()
    req = request()
    first = sched.schedule(req)
    first.context.cycle.data["computed"] = 1
    retry = sched.schedule(req, excluded={first.endpoint.name}, context=first.context)
    assert retry.context is first.context and retry.context.cycle.data["computed"] == 1
    assert sched.schedule(req).context is not first.context  # without one, a new cycle
    with pytest.raises(ValueError, match="another request"):
        sched.schedule(request(request_id="other"), context=first.context)


def test_ranked_puts_the_pick_first_then_falling_totals_ties_in_filter_order() -> None:
    pods = {n: snap() for n in ("a", "b", "c", "d", "e")}
    cfg = config(
        [
            {
                "type": "fixed",
                "name": "s",
                "parameters": {"scores": {"a": 0.2, "b": 0.2, "c": 0.9, "e": 0.5}},
            },
            {"type": "random-picker"},
        ],
        {"p": ["s", "random-picker"]},
    )
    sched = build_scheduler(cfg, datastore(pods), registry(), random.Random(1))
    for _ in range(10):
        result = sched.schedule(request())
        picked = result.endpoint.name
        expected = [n for n in ["c", "e", "a", "b", "d"] if n != picked]
        assert result.ranked() == [picked, *expected]


def test_pick_forced_by_affinity_runs_only_the_prefix_scorer_and_no_picker() -> None:
    class Counting:
        def __init__(self, name: str) -> None:
            self.name = name
            self.calls = 0

        def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
            self.calls += 1
            return {c.name: 0.75 for c in candidates}

    class NeverPicks:
        name = "never"

        def pick(self, ctx: SchedulingContext, candidates: Sequence[Any]) -> Candidate:
            raise AssertionError("a forced pick needs no picker")

    prefix, load = Counting("prefix"), Counting("load")
    profile = assemble_profile(
        "p",
        [(Affine("affine", keep="a", affinity=True), 1.0), (prefix, 2.0), (load, 1.0), (NeverPicks(), 1.0)],
    )
    profile.prefix_scorer = "prefix"
    result = Scheduler(datastore(PODS), profile).schedule(request())
    assert result.endpoint.name == "a" and result.affinity_narrowed
    assert (prefix.calls, load.calls) == (1, 0)
    assert result.scores == {"prefix": {"a": 0.75}} and result.total_scores == {"a": 1.5}
    assert result.prefix_match_ratio == 0.75
    # Relaxed (a retry or Envoy's fallbacks): every scorer and the picker run again.
    with pytest.raises(AssertionError, match="no picker"):
        Scheduler(datastore(PODS), profile).schedule(request(), relax_affinity=True)
    assert load.calls == 1


class Drop:
    """A plain (non-affinity) filter dropping one pod."""

    def __init__(self, name: str, drop: str) -> None:
        self.name = name
        self.drop = drop

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
        return [c for c in candidates if c.name != self.drop]


class Scores:
    def __init__(self, name: str, fixed: dict[str, float]) -> None:
        self.name = name
        self.fixed = fixed

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return {c.name: self.fixed[c.name] for c in candidates}


def test_relaxed_ranking_is_what_a_relaxed_reschedule_without_the_pick_ranks() -> None:
    """Envoy's fallbacks come from `rank_relaxed` (no second pass over the pool): the same pods in the same
    order as `schedule(relax_affinity=True)` excluding the pick, with a filter before affinity, one after it
    and a scorer whose scores depend on the other candidates (least-request normalises over them)."""
    names = ["a", "b", "c", "d", "e", "f"]
    for seed in range(40):
        rng = random.Random(seed)
        pods = {n: snap(waiting=rng.randrange(6), running=rng.randrange(6)) for n in names}
        fixed = {n: rng.random() for n in names}
        keep = rng.choice(["a", "b", "c"])
        profile = assemble_profile(
            "p",
            [
                (Drop("before", "d"), 1.0),
                (Affine("affine", keep=keep, affinity=True), 1.0),
                (Drop("after", "e"), 1.0),
                (LeastRequestScorer(), 1.0),
                (Scores("fixed", fixed), 0.7),
                (MaxScorePicker(rng=random.Random(0)), 1.0),
            ],
        )
        sched = Scheduler(datastore(pods, {n: rng.randrange(4) for n in names}), profile)
        req = request()
        result = sched.schedule(req)
        assert result.endpoint.name == keep and result.affinity_narrowed
        relaxed = sched.schedule(req, relax_affinity=True, excluded={keep}, context=result.context)
        assert sched.rank_relaxed(result, (keep,)) == relaxed.ranked()
        assert {"d", "e", keep}.isdisjoint(relaxed.ranked())


def test_relaxed_ranking_without_affinity_is_the_decisions_own_ranking_less_the_excluded() -> None:
    fixed = {"a": 0.1, "b": 0.9, "c": 0.5}
    profile = assemble_profile("p", [(Scores("fixed", fixed), 1.0), (MaxScorePicker(), 1.0)])
    sched = Scheduler(datastore(PODS), profile)
    result = sched.schedule(request())
    assert not result.affinity_narrowed and result.before_affinity is None
    assert sched.rank_relaxed(result, ("b",)) == ["c", "a"]
    # A filter after affinity that keeps only the pick: no fallbacks, not an error.
    only_a = assemble_profile(
        "p",
        [
            (Affine("affine", keep="a", affinity=True), 1.0),
            (Affine("only-a", keep="a", affinity=False), 1.0),
            (MaxScorePicker(), 1.0),
        ],
    )
    sched = Scheduler(datastore(PODS), only_a)
    result = sched.schedule(request())
    assert result.endpoint.name == "a" and sched.rank_relaxed(result, ("a",)) == []
