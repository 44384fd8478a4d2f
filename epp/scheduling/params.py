"""Validating a plugin's `parameters` mapping with a pydantic model, reported as PluginConfigError."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from epp.scheduling.plugins import PluginConfigError

ParamsT = TypeVar("ParamsT", bound=BaseModel)


class NoParams(BaseModel):
    """For plugins that take no parameters: any given parameter is an error."""

    model_config = ConfigDict(extra="forbid")


def parse_params(model: type[ParamsT], plugin_name: str, params: Mapping[str, Any]) -> ParamsT:
    """Validate `params` against `model`; errors name the plugin, each bad parameter and the reason."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        problems = "; ".join(
            f"parameter {'.'.join(str(p) for p in err['loc']) or '<root>'!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise PluginConfigError(f"plugin {plugin_name!r}: {problems}") from None


MOVED_THRESHOLDS = ("queueDepthThreshold", "kvCacheUtilThreshold")


def reject_moved_thresholds(plugin_name: str, params: Mapping[str, Any]) -> None:
    """Saturation thresholds used to be plugin parameters; say where they went instead of "unknown"."""
    moved = [key for key in MOVED_THRESHOLDS if key in params]
    if moved:
        raise PluginConfigError(
            f"plugin {plugin_name!r}: parameter {moved[0]!r}: saturation thresholds moved to the "
            "EndpointPickerConfig's `saturationDetector` section (saturationDetector: "
            "{queueDepthThreshold: ..., kvCacheUtilThreshold: ...})"
        )
