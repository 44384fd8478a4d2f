"""The EndpointPickerConfig document: plugins by type with parameters, and scheduling profiles."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    weight: float = Field(default=1.0, ge=0)


class SchedulingProfileSpec(BaseModel):
    """Plugins in the order they run; each is used in every role it implements (filter, scorer, picker)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    plugins: list[ProfilePluginRef]


class EndpointPickerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    plugins: list[PluginSpec]
    scheduling_profiles: list[SchedulingProfileSpec] = Field(alias="schedulingProfiles")

    @model_validator(mode="after")
    def _refs_resolve(self) -> EndpointPickerConfig:
        names = [p.name for p in self.plugins]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"plugin names must be unique, repeated: {sorted(dup)}")
        for profile in self.scheduling_profiles:
            for ref in profile.plugins:
                if ref.plugin_ref not in names:
                    raise ValueError(f"profile {profile.name!r} refers to unknown plugin {ref.plugin_ref!r}")
        return self
