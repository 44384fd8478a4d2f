"""The registry of every built-in plugin type."""

from __future__ import annotations

from epp.scheduling.plugins import PluginRegistry
from scorers import (
    kv_cache_scorer,
    least_request_scorer,
    lora_affinity_scorer,
    max_score_picker,
    precise_prefix_cache_scorer,
    prefill_affinity_filter,
    prefill_load_scorer,
    prefix_affinity_filter,
    prefix_cache_scorer,
    queue_scorer,
    random_picker,
    round_robin_picker,
    saturation_filter,
)

_MODULES = (
    queue_scorer,
    kv_cache_scorer,
    least_request_scorer,
    lora_affinity_scorer,
    saturation_filter,
    max_score_picker,
    round_robin_picker,
    random_picker,
    prefix_cache_scorer,
    prefix_affinity_filter,
    precise_prefix_cache_scorer,
    prefill_load_scorer,
    prefill_affinity_filter,
)


def default_registry() -> PluginRegistry:
    """A new registry holding every built-in plugin type."""
    registry = PluginRegistry()
    for module in _MODULES:
        module.register(registry)
    return registry
