import random
from collections import Counter
from typing import Any

import pytest

from epp.scheduling.plugins import PluginConfigError, PluginDeps, PluginRegistry, ScoredCandidate
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import Criticality, ShedError
from scorers import saturation_filter
from scorers.max_score_picker import MaxScorePicker
from scorers.random_picker import RandomPicker
from scorers.round_robin_picker import RoundRobinPicker
from scorers.saturation_filter import SaturationFilter
from tests.test_sched_support import cand, ctx, datastore, request

OK = cand("ok", waiting=1, kv=0.2)
QUEUED = cand("queued", waiting=5, kv=0.1)
FULL = cand("full", waiting=0, kv=0.8)


def names(cands) -> list[str]:
    return [c.name for c in cands]


@pytest.mark.parametrize("crit", list(Criticality))
def test_saturation_filter_keeps_only_unsaturated_when_some_exist(crit) -> None:
    out = SaturationFilter().filter(ctx(request(criticality=crit)), [OK, QUEUED, FULL])
    expected = ["ok", "queued", "full"] if crit is Criticality.CRITICAL else ["ok"]
    assert names(out) == expected


def test_saturation_filter_all_saturated_by_criticality() -> None:
    f = SaturationFilter()
    assert names(f.filter(ctx(request(criticality=Criticality.CRITICAL)), [QUEUED, FULL])) == [
        "queued",
        "full",
    ]
    assert names(f.filter(ctx(request(criticality=Criticality.STANDARD)), [QUEUED, FULL])) == [
        "queued",
        "full",
    ]
    with pytest.raises(ShedError) as err:
        f.filter(ctx(request(criticality=Criticality.SHEDDABLE)), [QUEUED, FULL])
    assert err.value.status == 429


def test_saturation_filter_uses_the_shared_detector_and_takes_no_parameters() -> None:
    registry = PluginRegistry()
    saturation_filter.register(registry)
    deps = PluginDeps(datastore=datastore({}), saturation=SaturationDetector(10, 0.9))
    f = registry.build("saturation-filter", "sat", {}, deps)
    assert isinstance(f, SaturationFilter)
    assert f.saturation is deps.saturation
    # QUEUED (5 waiting) and FULL (kv 0.8) are fine under the raised thresholds.
    assert names(f.filter(ctx(request(criticality=Criticality.SHEDDABLE)), [QUEUED, FULL])) == [
        "queued",
        "full",
    ]
    default = registry.build("saturation-filter", "sat", {}, PluginDeps(datastore=datastore({})))
    assert default.saturation == SaturationDetector()  # type: ignore[attr-defined]
    moved: list[dict[str, Any]] = [{"queueDepthThreshold": 10}, {"kvCacheUtilThreshold": 0.9}]
    for bad in moved:
        with pytest.raises(PluginConfigError, match=r"plugin 'sat'.*moved to .*saturationDetector"):
            registry.build("saturation-filter", "sat", bad, deps)
    with pytest.raises(PluginConfigError, match=r"plugin 'sat'.*queueDepth"):
        registry.build("saturation-filter", "sat", {"queueDepth": 3}, deps)


def scored(*pairs: tuple[str, float]) -> list[ScoredCandidate]:
    return [ScoredCandidate(cand(n), s) for n, s in pairs]


def test_max_score_picker_picks_highest() -> None:
    picker = MaxScorePicker(rng=random.Random(0))
    assert picker.pick(ctx(), scored(("a", 0.2), ("b", 0.9), ("c", 0.5))).name == "b"


def test_max_score_picker_breaks_exact_ties_randomly_and_seedably() -> None:
    pairs = (("a", 1.0), ("b", 1.0), ("c", 0.4))
    first, second = MaxScorePicker(rng=random.Random(7)), MaxScorePicker(rng=random.Random(7))
    assert [first.pick(ctx(), scored(*pairs)).name for _ in range(20)] == [
        second.pick(ctx(), scored(*pairs)).name for _ in range(20)
    ]
    picker = MaxScorePicker(rng=random.Random(1))
    counts = Counter(picker.pick(ctx(), scored(*pairs)).name for _ in range(200))
    assert set(counts) == {"a", "b"}
    assert min(counts.values()) > 50


def test_round_robin_cycles_in_name_order_regardless_of_input_order() -> None:
    picker = RoundRobinPicker()
    picks = [picker.pick(ctx(), scored(("c", 0), ("a", 0), ("b", 0))).name for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_survives_changing_candidates() -> None:
    picker = RoundRobinPicker()
    assert picker.pick(ctx(), scored(("a", 0), ("b", 0))).name == "a"
    assert picker.pick(ctx(), scored(("b", 0), ("c", 0), ("a", 0))).name == "b"
    assert picker.pick(ctx(), scored(("a", 0), ("b", 0), ("c", 0))).name == "c"
    assert picker.pick(ctx(), scored(("b", 0))).name == "b"


def test_random_picker_uniform_and_seedable() -> None:
    pairs = (("a", 0.0), ("b", 9.0), ("c", 0.0))
    first, second = RandomPicker(rng=random.Random(3)), RandomPicker(rng=random.Random(3))
    assert [first.pick(ctx(), scored(*pairs)).name for _ in range(20)] == [
        second.pick(ctx(), scored(*pairs)).name for _ in range(20)
    ]
    picker = RandomPicker(rng=random.Random(5))
    counts = Counter(picker.pick(ctx(), scored(*pairs)).name for _ in range(600))
    assert set(counts) == {"a", "b", "c"}
    assert all(150 < n < 250 for n in counts.values())
