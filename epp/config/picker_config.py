"""The EndpointPickerConfig document: plugins by type with parameters, scheduling profiles, and the one
saturation detector they share."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from epp.config.kv_events import KVEventsSpec
from epp.config.numbers import FiniteFloat
from epp.health.outlier_settings import OutlierDetectionSpec


class PluginSpec(BaseModel):
    """A plugin instance: `type` picks the implementation; profiles refer to it by `name` (default: type)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    name: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_name(self) -> PluginSpec:
        if not self.name:
            self.name = self.type
        return self


class ProfilePluginRef(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    plugin_ref: str = Field(alias="pluginRef")
    weight: FiniteFloat = Field(default=1.0, ge=0)


class SchedulingProfileSpec(BaseModel):
    """Plugins in the order they run; each is used in every role it implements (filter, scorer, picker)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    plugins: list[ProfilePluginRef]


class SaturationDetectorSpec(BaseModel):
    """When a pod counts as saturated (GIE's `saturationDetector` section): waiting requests at or above
    `queueDepthThreshold`, or KV-cache use at or above `kvCacheUtilThreshold`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    queue_depth_threshold: int = Field(default=5, ge=1, strict=True, alias="queueDepthThreshold")
    kv_cache_util_threshold: FiniteFloat = Field(default=0.8, gt=0.0, le=1.0, alias="kvCacheUtilThreshold")


class EndpointPickerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    plugins: list[PluginSpec]
    scheduling_profiles: list[SchedulingProfileSpec] = Field(alias="schedulingProfiles")
    saturation_detector: SaturationDetectorSpec = Field(
        default_factory=SaturationDetectorSpec, alias="saturationDetector"
    )
    # Istio's field names (epp.health.outlier_settings); None: the pool's annotations, else the defaults.
    outlier_detection: OutlierDetectionSpec | None = Field(default=None, alias="outlierDetection")
    # Where the pods' vLLM KV events come from (epp.config.kv_events); None: not followed unless a
    # precise-prefix-cache-scorer is configured (then discovered from /kv_event_sources).
    kv_events: KVEventsSpec | None = Field(default=None, alias="kvEvents")

    @model_validator(mode="after")
    def _refs_resolve(self) -> EndpointPickerConfig:
        names = [p.name for p in self.plugins]
        dup = {n for n, count in Counter(names).items() if count > 1}
        if dup:
            raise ValueError(f"plugin names must be unique, repeated: {sorted(dup)}")
        defined = set(names)
        for profile in self.scheduling_profiles:
            for ref in profile.plugins:
                if ref.plugin_ref not in defined:
                    raise ValueError(f"profile {profile.name!r} refers to unknown plugin {ref.plugin_ref!r}")
        return self
