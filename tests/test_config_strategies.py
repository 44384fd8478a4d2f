"""Built-in strategies: the shipped EndpointPickerConfig documents; they build with the real plugins."""

from __future__ import annotations

import random

import pytest

from epp.config import ConfigError, RoutingStrategy, builtin_strategy
from epp.datastore import Datastore
from epp.scheduling.builder import build_scheduler
from epp.scheduling.saturation import SaturationDetector
from scorers.builtin import default_registry

SATURATION = {"queueDepthThreshold": 5, "kvCacheUtilThreshold": 0.8}
PREFIX_SCORER = {
    "blockSize": 64,
    "maxPrefixBlocksToMatch": 256,
    "lruCapacityPerServer": 31250,
    "autoSizeLRU": True,
}

EXPECTED_PROFILES = {
    RoutingStrategy.ROUND_ROBIN: [("saturation-filter", 1.0), ("round-robin-picker", 1.0)],
    RoutingStrategy.RANDOM: [("saturation-filter", 1.0), ("random-picker", 1.0)],
    RoutingStrategy.LEAST_REQUEST: [
        ("saturation-filter", 1.0),
        ("least-request-scorer", 1.0),
        ("max-score-picker", 1.0),
    ],
    RoutingStrategy.PREFIX_CACHE: [
        ("saturation-filter", 1.0),
        ("prefix-cache-scorer", 0.0),
        ("prefix-affinity-filter", 1.0),
        ("least-request-scorer", 1.0),
        ("max-score-picker", 1.0),
    ],
    RoutingStrategy.PREFIX_TOKENS: [
        ("saturation-filter", 1.0),
        ("prefix-cache-scorer", 0.0),
        ("prefill-load-scorer", 2.0),
        ("prefill-affinity-filter", 1.0),
        ("least-request-scorer", 0.25),
        ("max-score-picker", 1.0),
    ],
    RoutingStrategy.LOAD_AWARE: [
        ("saturation-filter", 1.0),
        ("prefix-cache-scorer", 3.0),
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 1.0),
        ("lora-affinity-scorer", 3.0),
        ("least-request-scorer", 1.0),
        ("max-score-picker", 1.0),
    ],
}
PROFILE_NAMES = {
    RoutingStrategy.ROUND_ROBIN: "round-robin",
    RoutingStrategy.RANDOM: "random",
    RoutingStrategy.LEAST_REQUEST: "least-request",
    RoutingStrategy.PREFIX_CACHE: "prefix-cache",
    RoutingStrategy.PREFIX_TOKENS: "prefix-tokens",
    RoutingStrategy.LOAD_AWARE: "load-aware",
}


@pytest.mark.parametrize("strategy", list(RoutingStrategy))
def test_builtin_profile_lists_plugins_in_order(strategy: RoutingStrategy) -> None:
    config = builtin_strategy(strategy.value)
    [profile] = config.scheduling_profiles
    assert profile.name == PROFILE_NAMES[strategy] == strategy.profile_name
    assert [(r.plugin_ref, r.weight) for r in profile.plugins] == EXPECTED_PROFILES[strategy]
    # Every plugin is named after its type, and every one is used by the profile.
    assert [(p.name, p.type) for p in config.plugins] == [(r, r) for r, _ in EXPECTED_PROFILES[strategy]]


@pytest.mark.parametrize("strategy", list(RoutingStrategy))
def test_builtin_parameters(strategy: RoutingStrategy) -> None:
    config = builtin_strategy(strategy)
    # The thresholds are set once, in the saturationDetector section, not per plugin.
    assert config.saturation_detector.model_dump(by_alias=True) == SATURATION
    params = {p.type: p.parameters for p in config.plugins}
    assert params["saturation-filter"] == {}
    if "prefix-cache-scorer" in params:
        assert params["prefix-cache-scorer"] == PREFIX_SCORER
    if "prefix-affinity-filter" in params:
        assert params["prefix-affinity-filter"] == {
            "threshold": 0.5,
            "prefixPluginRef": "prefix-cache-scorer",
        }
    if "prefill-affinity-filter" in params:
        assert params["prefill-affinity-filter"] == {
            "threshold": 0.5,
            "waitBound": 0.25,
            "prefixPluginRef": "prefix-cache-scorer",
            "loadPluginRef": "prefill-load-scorer",
        }
        assert params["prefill-load-scorer"] == {"prefixPluginRef": "prefix-cache-scorer"}
    for plain in (
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "least-request-scorer",
        "lora-affinity-scorer",
    ):
        assert params.get(plain, {}) == {}


def test_each_call_returns_a_fresh_config() -> None:
    first = builtin_strategy("PREFIX_CACHE")
    first.plugins.clear()
    assert builtin_strategy("PREFIX_CACHE").plugins


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        builtin_strategy("FASTEST")
    valid = "PREFIX_CACHE, PREFIX_TOKENS, LEAST_REQUEST, ROUND_ROBIN, RANDOM, LOAD_AWARE"
    assert str(info.value) == f'strategy: must be one of {valid} (got "FASTEST")'


@pytest.mark.parametrize("strategy", list(RoutingStrategy))
def test_builtin_strategies_build_with_the_real_plugins(strategy: RoutingStrategy) -> None:
    scheduler = build_scheduler(builtin_strategy(strategy), Datastore(), default_registry(), random.Random(0))
    assert scheduler.saturation == SaturationDetector(5, 0.8)
