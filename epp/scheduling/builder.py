"""Turns an EndpointPickerConfig into a Scheduler: build the plugins in order, then assemble the profiles."""

from __future__ import annotations

import random

from epp.config.picker_config import EndpointPickerConfig
from epp.datastore import Datastore
from epp.kv_events.precise_index import PreciseIndex
from epp.scheduling.plugins import PluginConfigError, PluginDeps, PluginRegistry, PluginTimer
from epp.scheduling.profile import SchedulingProfile, assemble_profile
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.scheduler import Scheduler

PREFIX_SCORER_TYPE = "prefix-cache-scorer"
PRECISE_PREFIX_SCORER_TYPE = "precise-prefix-cache-scorer"


def build_plugins(
    config: EndpointPickerConfig, registry: PluginRegistry, deps: PluginDeps
) -> dict[str, object]:
    """Build every listed plugin in order; each factory sees the instances built before it in deps.plugins."""
    for spec in config.plugins:
        try:
            plugin = registry.build(spec.type, spec.name, spec.parameters, deps)
        except PluginConfigError as exc:
            raise PluginConfigError(f"plugin {spec.name!r} (type {spec.type!r}): {exc}") from None
        deps.plugins[spec.name] = plugin
    return deps.plugins


def build_profiles(config: EndpointPickerConfig, plugins: dict[str, object]) -> list[SchedulingProfile]:
    if not config.scheduling_profiles:
        raise PluginConfigError("config has no scheduling profile")
    # A profile's prefix ratio (for metrics): from its precise scorer if it has one, else the approximate.
    prefix_names = [spec.name for spec in config.plugins if spec.type == PRECISE_PREFIX_SCORER_TYPE]
    prefix_names += [spec.name for spec in config.plugins if spec.type == PREFIX_SCORER_TYPE]
    profiles = []
    for spec in config.scheduling_profiles:
        refs = [(plugins[ref.plugin_ref], ref.weight) for ref in spec.plugins]
        used = {ref.plugin_ref for ref in spec.plugins}
        prefix = next((n for n in prefix_names if n in used), None)
        profiles.append(assemble_profile(spec.name, refs, prefix_scorer=prefix))
    return profiles


def build_saturation_detector(config: EndpointPickerConfig) -> SaturationDetector:
    spec = config.saturation_detector
    return SaturationDetector(spec.queue_depth_threshold, spec.kv_cache_util_threshold)


def build_scheduler(
    config: EndpointPickerConfig,
    datastore: Datastore,
    registry: PluginRegistry,
    rng: random.Random | None = None,
    timer: PluginTimer | None = None,
    kv_index: PreciseIndex | None = None,
) -> Scheduler:
    """Raises PluginConfigError naming the plugin or profile when the config cannot be built.

    One SaturationDetector, from the config's `saturationDetector` section, is shared by every plugin (via
    PluginDeps.saturation) and exposed as `scheduler.saturation`. `timer` observes each plugin call.
    `kv_index` is the pool's KV-event index (PluginDeps.kv_index) for the precise prefix scorer.
    """
    saturation = build_saturation_detector(config)
    deps = PluginDeps(
        datastore=datastore, rng=rng or random.Random(), saturation=saturation, kv_index=kv_index
    )
    plugins = build_plugins(config, registry, deps)
    return Scheduler(
        datastore,
        build_profiles(config, plugins),
        saturation=saturation,
        timer=timer,
        plugin_types={spec.name: spec.type for spec in config.plugins},
    )
