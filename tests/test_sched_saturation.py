"""The one SaturationDetector: its rule, admission's all-saturated check, and its config section."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from epp.config import ConfigError, builtin_strategy, load_config_text
from epp.config.picker_config import EndpointPickerConfig
from epp.datastore import Endpoint, EndpointState
from epp.scheduling.builder import build_scheduler
from epp.scheduling.plugins import PluginConfigError
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import LLMRequest, SchedulingContext
from scorers.builtin import default_registry
from scorers.prefix_affinity_filter import PrefixAffinityFilter
from scorers.saturation_filter import SaturationFilter
from tests.test_sched_support import cand, datastore

OK = cand("ok", waiting=4, kv=0.79)
QUEUED = cand("queued", waiting=5)
FULL = cand("full", kv=0.8)


def test_saturated_at_either_threshold() -> None:
    detector = SaturationDetector()
    assert (detector.queue_depth_threshold, detector.kv_cache_util_threshold) == (5, 0.8)
    assert [detector.is_saturated(c) for c in (OK, QUEUED, FULL)] == [False, True, True]
    relaxed = SaturationDetector(queue_depth_threshold=6, kv_cache_util_threshold=0.9)
    assert [relaxed.is_saturated(c) for c in (OK, QUEUED, FULL)] == [False, False, False]
    # A datastore state without metrics: unknown load counts as saturated.
    assert detector.is_saturated(EndpointState(Endpoint("x", "127.0.0.1", 1)))


def test_all_saturated_needs_every_candidate_and_at_least_one() -> None:
    detector = SaturationDetector()
    assert detector.all_saturated([QUEUED, FULL])
    assert not detector.all_saturated([QUEUED, OK, FULL])
    assert not detector.all_saturated([])  # no endpoint is a 503, not a reason to shed
    assert detector.all_saturated(iter([FULL]))


class CountingDetector(SaturationDetector):
    """A detector that counts its per-pod checks."""

    checks = 0

    def is_saturated(self, candidate: Any) -> bool:
        CountingDetector.checks += 1
        return super().is_saturated(candidate)


def test_a_cycle_checks_each_pod_once_for_the_filters_after_the_saturation_filter() -> None:
    detector = CountingDetector()
    ctx = SchedulingContext(LLMRequest(request_id="r", model="m", target_model="m", prompt="p"))
    fresh = detector.unsaturated([OK, QUEUED, FULL], ctx)
    assert fresh == [OK] and CountingDetector.checks == 3
    assert detector.unsaturated(fresh, ctx) is fresh and CountingDetector.checks == 3
    # Another list, another detector or another cycle: checked again.
    assert detector.unsaturated(list(fresh), ctx) == [OK] and CountingDetector.checks == 4
    assert CountingDetector().unsaturated(fresh, ctx) == [OK] and CountingDetector.checks == 5
    other = SchedulingContext(ctx.request)
    assert detector.unsaturated(fresh, other) == [OK] and CountingDetector.checks == 6
    assert detector.unsaturated([OK, FULL]) == [OK] and CountingDetector.checks == 8


@pytest.mark.parametrize(("q", "kv"), [(0, 0.8), (True, 0.8), (5, 0.0), (5, 1.01), (5, float("nan"))])
def test_detector_rejects_bad_thresholds(q: Any, kv: float) -> None:
    with pytest.raises(ValueError):
        SaturationDetector(q, kv)


PLUGINS: list[dict[str, Any]] = [
    {"type": "saturation-filter"},
    {"type": "prefix-cache-scorer"},
    {"type": "prefix-affinity-filter"},
    {"type": "max-score-picker"},
]
PROFILE = {"name": "p", "plugins": [{"pluginRef": p["type"]} for p in PLUGINS]}


def picker_config(
    section: dict[str, Any] | None, plugins: list[dict[str, Any]] = PLUGINS
) -> EndpointPickerConfig:
    body: dict[str, Any] = {"plugins": plugins, "schedulingProfiles": [PROFILE]}
    if section is not None:
        body["saturationDetector"] = section
    return EndpointPickerConfig.model_validate(body)


def test_one_detector_from_the_config_is_shared_by_every_plugin() -> None:
    cfg = picker_config({"queueDepthThreshold": 9, "kvCacheUtilThreshold": 0.95})
    sched = build_scheduler(cfg, datastore({}), default_registry(), random.Random(0))
    assert sched.saturation == SaturationDetector(9, 0.95)
    sat, affinity = sched.profile().filters
    assert isinstance(sat, SaturationFilter) and isinstance(affinity, PrefixAffinityFilter)
    assert sat.saturation is sched.saturation and affinity.saturation is sched.saturation


def test_section_is_optional_and_defaults_to_gie_values() -> None:
    sched = build_scheduler(picker_config(None), datastore({}), default_registry(), random.Random(0))
    assert sched.saturation == SaturationDetector(5, 0.8)
    assert picker_config({}).saturation_detector.queue_depth_threshold == 5


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"queueDepthThreshold": 0}, "queueDepthThreshold"),
        ({"queueDepthThreshold": "5"}, "queueDepthThreshold"),
        ({"queueDepthThreshold": 2.0}, "queueDepthThreshold"),
        ({"kvCacheUtilThreshold": 0}, "kvCacheUtilThreshold"),
        ({"kvCacheUtilThreshold": 1.5}, "kvCacheUtilThreshold"),
        ({"queueDepth": 3}, "queueDepth"),
    ],
)
def test_section_is_validated(section: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        picker_config(section)


@pytest.mark.parametrize("plugin", ["saturation-filter", "prefix-affinity-filter"])
@pytest.mark.parametrize("key", ["queueDepthThreshold", "kvCacheUtilThreshold"])
def test_thresholds_given_to_a_plugin_say_where_they_moved(plugin: str, key: str) -> None:
    plugins = [dict(p, parameters={key: 1}) if p["type"] == plugin else p for p in PLUGINS]
    with pytest.raises(PluginConfigError, match=rf"plugin '{plugin}'.*{key}.*moved to.*saturationDetector"):
        build_scheduler(picker_config(None, plugins), datastore({}), default_registry(), random.Random(0))


def test_builtin_strategies_set_the_thresholds_once() -> None:
    config = builtin_strategy("PREFIX_CACHE")
    assert config.saturation_detector.queue_depth_threshold == 5
    assert config.saturation_detector.kv_cache_util_threshold == 0.8
    assert all("Threshold" not in key for p in config.plugins for key in p.parameters)


DOCUMENT = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
metadata: {name: custom}
saturationDetector: {queueDepthThreshold: %s, kvCacheUtilThreshold: 0.5}
plugins:
- type: saturation-filter
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: saturation-filter}, {pluginRef: max-score-picker}]
"""


def test_the_section_in_a_config_document() -> None:
    config = load_config_text(DOCUMENT % 3, {})
    sched = build_scheduler(config.picker_config, datastore({}), default_registry(), random.Random(0))
    assert sched.saturation == SaturationDetector(3, 0.5)
    with pytest.raises(ConfigError, match=r"saturationDetector\.queueDepthThreshold"):
        load_config_text(DOCUMENT % 0, {})
