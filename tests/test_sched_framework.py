import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from epp.config.picker_config import EndpointPickerConfig
from epp.datastore import Endpoint
from epp.scheduling.builder import build_scheduler
from epp.scheduling.plugins import PluginConfigError, PluginDeps, PluginRegistry
from epp.scheduling.scheduler import Scheduler, UnknownProfileError
from epp.scheduling.types import Candidate, Criticality, NoEndpointError, SchedulingContext, ShedError
from scorers import (
    kv_cache_scorer,
    least_request_scorer,
    lora_affinity_scorer,
    max_score_picker,
    queue_scorer,
    random_picker,
    round_robin_picker,
    saturation_filter,
)
from tests.test_sched_support import datastore, request, snap


class Recorder:
    """Filter (drops names in `drop`), scorer (fixed scores) and PreRequest hook at once."""

    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        self.name = name
        self.drop = set(params.get("drop", []))
        self.fixed: dict[str, float] = dict(params.get("scores", {}))
        self.filtered: list[list[str]] = []
        self.picked: list[tuple[str, str]] = []

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
        self.filtered.append([c.name for c in candidates])
        return [c for c in candidates if c.name not in self.drop]

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return {c.name: self.fixed.get(c.name, 0.0) for c in candidates}

    def pre_request(self, ctx: SchedulingContext, endpoint: Endpoint) -> None:
        self.picked.append((ctx.request.request_id, endpoint.name))


class FixedScorer:
    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        self.name = name
        self.fixed: dict[str, float] = dict(params.get("scores", {}))

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return {c.name: self.fixed.get(c.name, 0.0) for c in candidates}


class NoRole:
    def __init__(self, name: str) -> None:
        self.name = name


def registry() -> PluginRegistry:
    reg = PluginRegistry()
    for module in (
        queue_scorer,
        kv_cache_scorer,
        least_request_scorer,
        lora_affinity_scorer,
        saturation_filter,
        max_score_picker,
        round_robin_picker,
        random_picker,
    ):
        module.register(reg)
    reg.register("recorder", lambda name, params, deps: Recorder(name, params))
    reg.register("fixed", lambda name, params, deps: FixedScorer(name, params))
    reg.register("prefix-cache-scorer", lambda name, params, deps: FixedScorer(name, params))
    reg.register("no-role", lambda name, params, deps: NoRole(name))
    reg.register("peek", lambda name, params, deps: NoRole(f"saw {sorted(deps.plugins)}"))
    return reg


def config(plugins: list[Any], profiles: dict[str, list[Any]]) -> EndpointPickerConfig:
    return EndpointPickerConfig.model_validate(
        {
            "plugins": plugins,
            "schedulingProfiles": [
                {
                    "name": name,
                    "plugins": [r if isinstance(r, dict) else {"pluginRef": r} for r in refs],
                }
                for name, refs in profiles.items()
            ],
        }
    )


PODS = {"a": snap(), "b": snap(), "c": snap()}


def build(plugins: list[Any], profiles: dict[str, list[Any]], pods=None, **kw) -> Scheduler:
    ds = datastore(PODS if pods is None else pods, **kw)
    return build_scheduler(config(plugins, profiles), ds, registry(), random.Random(0))


def test_plugin_used_in_every_role_it_implements() -> None:
    sched = build(
        [
            {"type": "recorder", "parameters": {"drop": ["c"], "scores": {"b": 1.0}}},
            {"type": "max-score-picker"},
        ],
        {"p": ["recorder", "max-score-picker"]},
    )
    rec = sched.profile().filters[0]
    assert isinstance(rec, Recorder)
    assert [w.scorer for w in sched.profile().scorers] == [rec]
    assert sched.profile().pre_requests == [rec]
    result = sched.schedule(request(request_id="req-7"))
    assert rec.filtered == [["a", "b", "c"]]
    assert result.candidates_after_filters == ["a", "b"]
    assert result.endpoint.name == "b"
    assert rec.picked == []  # hooks are the director's to call, not the scheduler's
    for hook in sched.profile(result.profile).pre_requests:
        hook.pre_request(result.context, result.endpoint)
    assert rec.picked == [("req-7", "b")]


def test_weighted_totals_decide_the_pick_and_weight_zero_is_still_reported() -> None:
    plugins = [
        {"type": "fixed", "name": "s1", "parameters": {"scores": {"a": 1.0, "b": 0.0, "c": 0.5}}},
        {"type": "fixed", "name": "s2", "parameters": {"scores": {"a": 0.0, "b": 1.0, "c": 0.5}}},
        {"type": "fixed", "name": "muted", "parameters": {"scores": {"c": 1.0}}},
        {"type": "max-score-picker"},
    ]
    refs = [
        {"pluginRef": "s1", "weight": 1},
        {"pluginRef": "s2", "weight": 3},
        {"pluginRef": "muted", "weight": 0},
        "max-score-picker",
    ]
    result = build(plugins, {"p": refs}).schedule(request())
    assert result.total_scores == pytest.approx({"a": 1.0, "b": 3.0, "c": 2.0})
    assert result.endpoint.name == "b"
    assert result.scores["muted"] == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert set(result.scores) == {"s1", "s2", "muted"}
    # Flip the weights: s1 now dominates.
    refs[0], refs[1] = {"pluginRef": "s1", "weight": 3}, {"pluginRef": "s2", "weight": 1}
    assert build(plugins, {"p": refs}).schedule(request()).endpoint.name == "a"


def test_filter_emptying_candidates_names_the_filter() -> None:
    sched = build(
        [
            {"type": "recorder", "name": "picky", "parameters": {"drop": ["a", "b", "c"]}},
            {"type": "random-picker"},
        ],
        {"p": ["picky", "random-picker"]},
    )
    with pytest.raises(NoEndpointError, match="picky") as err:
        sched.schedule(request())
    assert err.value.status == 503


def test_shed_error_from_filter_propagates() -> None:
    pods = {"a": snap(waiting=9), "b": snap(kv=0.95)}
    sched = build(
        [{"type": "saturation-filter"}, {"type": "max-score-picker"}],
        {"p": ["saturation-filter", "max-score-picker"]},
        pods=pods,
    )
    with pytest.raises(ShedError) as err:
        sched.schedule(request(criticality=Criticality.SHEDDABLE))
    assert err.value.status == 429
    assert sched.schedule(request(criticality=Criticality.CRITICAL)).endpoint.name in {"a", "b"}


def test_no_schedulable_endpoint_is_503() -> None:
    empty = build([{"type": "random-picker"}], {"p": ["random-picker"]}, pods={})
    with pytest.raises(NoEndpointError) as err:
        empty.schedule(request())
    assert err.value.status == 503
    failing = build([{"type": "random-picker"}], {"p": ["random-picker"]}, pods={"a": snap()})
    failing.datastore.record_scrape_failure("a", "connection refused")
    with pytest.raises(NoEndpointError, match="no schedulable endpoint"):
        failing.schedule(request())


def test_profile_selected_by_name_first_is_default() -> None:
    plugins = [
        {"type": "fixed", "name": "likes-a", "parameters": {"scores": {"a": 1.0}}},
        {"type": "fixed", "name": "likes-c", "parameters": {"scores": {"c": 1.0}}},
        {"type": "max-score-picker"},
    ]
    sched = build(
        plugins, {"first": ["likes-a", "max-score-picker"], "second": ["likes-c", "max-score-picker"]}
    )
    assert sched.schedule(request()).endpoint.name == "a"
    result = sched.schedule(request(), profile="second")
    assert (result.endpoint.name, result.profile) == ("c", "second")
    with pytest.raises(UnknownProfileError, match="nope"):
        sched.schedule(request(), profile="nope")


def test_scheduler_does_not_count_in_flight() -> None:
    sched = build(
        [{"type": "least-request-scorer"}, {"type": "max-score-picker"}],
        {"p": ["least-request-scorer", "max-score-picker"]},
        in_flight={"a": 2, "b": 1},
    )
    result = sched.schedule(request())
    assert result.endpoint.name == "c"
    assert [sched.datastore.get(n).in_flight for n in "abc"] == [2, 1, 0]  # type: ignore[union-attr]


def test_prefix_match_ratio_comes_from_prefix_cache_scorer() -> None:
    plugins = [
        {"type": "prefix-cache-scorer", "name": "pfx", "parameters": {"scores": {"b": 0.75}}},
        {"type": "max-score-picker"},
    ]
    assert build(plugins, {"p": ["pfx", "max-score-picker"]}).schedule(request()).prefix_match_ratio == 0.75
    plain = build([{"type": "random-picker"}], {"p": ["random-picker"]}).schedule(request())
    assert plain.prefix_match_ratio is None


def test_decision_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    sched = build(
        [{"type": "queue-scorer"}, {"type": "max-score-picker"}], {"p": ["queue-scorer", "max-score-picker"]}
    )
    with caplog.at_level(logging.DEBUG, logger="epp.scheduling.scheduler"):
        result = sched.schedule(request(request_id="req-42"))
    text = caplog.text
    assert "req-42" in text and "queue-scorer" in text and f"picked {result.endpoint.name}" in text


def test_factories_see_plugins_built_before_them() -> None:
    sched_cfg = config(
        [{"type": "queue-scorer"}, {"type": "peek"}, {"type": "random-picker"}], {"p": ["random-picker"]}
    )
    deps = PluginDeps(datastore=datastore(PODS))
    from epp.scheduling.builder import build_plugins

    built = build_plugins(sched_cfg, registry(), deps)
    assert built["peek"].name == "saw ['queue-scorer']"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "plugins,profiles,match",
    [
        ([{"type": "nonexistent"}], {"p": ["nonexistent"]}, r"plugin 'nonexistent'.*unknown plugin type"),
        (
            [{"type": "saturation-filter", "name": "sat", "parameters": {"queueDepth": 1}}],
            {"p": ["sat"]},
            r"plugin 'sat'.*queueDepth",
        ),
        (
            [{"type": "random-picker"}, {"type": "max-score-picker"}],
            {"prof": ["random-picker", "max-score-picker"]},
            r"profile 'prof'.*exactly one picker, found 2",
        ),
        (
            [{"type": "queue-scorer"}],
            {"lonely": ["queue-scorer"]},
            r"profile 'lonely'.*exactly one picker, found 0",
        ),
        (
            [{"type": "no-role"}, {"type": "random-picker"}],
            {"prof": ["no-role", "random-picker"]},
            r"profile 'prof'.*'no-role' implements none",
        ),
        ([{"type": "random-picker"}], {}, "no scheduling profile"),
    ],
)
def test_build_errors_name_the_culprit(plugins, profiles, match) -> None:
    with pytest.raises(PluginConfigError, match=match):
        build(plugins, profiles)


def test_candidates_follow_in_flight_metrics_and_endpoint_changes() -> None:
    sched = build(
        [{"type": "least-request-scorer"}, {"type": "max-score-picker"}],
        {"p": ["least-request-scorer", "max-score-picker"]},
        pods={"a": snap(), "b": snap(running=1)},
    )
    assert sched.schedule(request()).endpoint.name == "a"
    sched.datastore.acquire("a")
    sched.datastore.acquire("a")
    assert sched.schedule(request()).endpoint.name == "b"  # a's in-flight count is seen at once
    sched.datastore.update_metrics("b", snap(running=5))
    assert sched.schedule(request()).endpoint.name == "a"  # b's new snapshot is seen
    sched.datastore.set_endpoints([Endpoint("a", "127.0.0.1", 9999), Endpoint("b", "127.0.0.1", 8001)])
    sched.datastore.update_metrics("a", snap())
    result = sched.schedule(request())
    assert (result.endpoint.name, result.endpoint.port) == ("a", 9999)  # a was replaced: new address


def test_picker_sees_totals_that_changed_since_the_last_decision() -> None:
    sched = build(
        [{"type": "fixed", "name": "s", "parameters": {"scores": {"a": 1.0}}}, {"type": "max-score-picker"}],
        {"p": ["s", "max-score-picker"]},
    )
    scorer = sched.profile().scorers[0].scorer
    assert isinstance(scorer, FixedScorer)
    assert sched.schedule(request()).endpoint.name == "a"
    scorer.fixed = {"a": 0.1, "c": 0.9}
    assert sched.schedule(request()).endpoint.name == "c"


class WildScorer:
    """Returns out-of-range values: the scheduler must clamp them before weighting."""

    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        self.name = name

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return {"a": float("nan"), "b": 7.5, "c": -3.0}


def test_scores_are_clamped_to_unit_range_before_weighting() -> None:
    reg = registry()
    reg.register("wild", lambda name, params, deps: WildScorer(name, params))
    plugins = [
        {"type": "wild"},
        {"type": "fixed", "name": "s", "parameters": {"scores": {"a": 0.5, "c": 1.0}}},
        {"type": "max-score-picker"},
    ]
    wild = {"pluginRef": "wild", "weight": 10}
    for refs in ([wild, "s", "max-score-picker"], ["s", wild, "max-score-picker"]):
        sched = build_scheduler(config(plugins, {"p": refs}), datastore(PODS), reg, random.Random(0))
        result = sched.schedule(request())
        assert result.scores["wild"] == {"a": 0.0, "b": 1.0, "c": 0.0}  # NaN -> 0, 7.5 -> 1, -3 -> 0
        assert result.total_scores == pytest.approx({"a": 0.5, "b": 10.0, "c": 1.0})
        assert result.endpoint.name == "b"
        assert result.scores["s"] == {"a": 0.5, "b": 0.0, "c": 1.0}  # in-range scores pass unchanged
    # Weight 0: not added, but still reported clamped.
    sched = build_scheduler(
        config(plugins, {"p": [{"pluginRef": "wild", "weight": 0}, "s", "max-score-picker"]}),
        datastore(PODS),
        reg,
        random.Random(0),
    )
    result = sched.schedule(request())
    assert result.scores["wild"] == {"a": 0.0, "b": 1.0, "c": 0.0}
    assert result.total_scores == pytest.approx({"a": 0.5, "b": 0.0, "c": 1.0})


class Timer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def observe_plugin(
        self, extension_point: str, plugin_type: str, plugin_name: str, seconds: float
    ) -> None:
        assert seconds >= 0.0
        self.calls.append((extension_point, plugin_type, plugin_name))


def test_timer_sees_every_plugin_call_with_its_config_type() -> None:
    timer = Timer()
    cfg = config(
        [
            {"type": "saturation-filter", "name": "sat"},
            {"type": "fixed", "name": "likes-a", "parameters": {"scores": {"a": 1.0}}},
            {"type": "max-score-picker"},
        ],
        {"p": ["sat", "likes-a", "max-score-picker"]},
    )
    sched = build_scheduler(cfg, datastore(PODS), registry(), random.Random(0), timer=timer)
    sched.schedule(request())
    assert timer.calls == [
        ("filter", "saturation-filter", "sat"),
        ("scorer", "fixed", "likes-a"),
        ("picker", "max-score-picker", "max-score-picker"),
    ]
    untimed = build(
        [{"type": "random-picker"}], {"p": ["random-picker"]}
    )  # no timer: nothing observed, nothing breaks
    assert untimed.timer is None and untimed.schedule(request()).endpoint.name in PODS


def test_epp_metrics_is_a_plugin_timer() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from epp.metrics import EppMetrics

    ds = datastore(PODS)
    metrics = EppMetrics(ds)
    cfg = config(
        [{"type": "least-request-scorer"}, {"type": "max-score-picker", "name": "pick"}],
        {"p": ["least-request-scorer", "pick"]},
    )
    build_scheduler(cfg, ds, registry(), random.Random(0), timer=metrics).schedule(request())
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    counts = {
        (s.labels["extension_point"], s.labels["plugin_type"], s.labels["plugin_name"]): s.value
        for s in families["llm_d_epp_plugin_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {
        ("scorer", "least-request-scorer", "least-request-scorer"): 1.0,
        ("picker", "max-score-picker", "pick"): 1.0,
    }
