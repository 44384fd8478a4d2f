"""`saturation-filter`: steer away from saturated pods, and shed sheddable requests when all are saturated.

- Critical: every candidate passes; critical requests are never shed.
- Standard: non-saturated candidates if any, else all (queue rather than fail).
- Sheddable: only non-saturated candidates; if every candidate is saturated the request is shed (429).

"Saturated" is the scheduler's one SaturationDetector (the EndpointPickerConfig's `saturationDetector`
section); the filter takes no parameters of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.params import NoParams, parse_params, reject_moved_thresholds
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import Candidate, Criticality, SchedulingContext, ShedError

TYPE_NAME = "saturation-filter"


class SaturationFilter:
    def __init__(self, name: str = TYPE_NAME, saturation: SaturationDetector | None = None) -> None:
        self.name = name
        self.saturation = saturation or SaturationDetector()

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
        criticality = ctx.request.criticality
        if criticality is Criticality.CRITICAL:
            return list(candidates)
        fresh = self.saturation.unsaturated(candidates, ctx)
        if fresh:
            return fresh
        if criticality is Criticality.SHEDDABLE:
            raise ShedError(
                f"all {len(candidates)} candidate endpoints are saturated "
                f"({self.saturation.describe()}); sheddable request shed"
            )
        return list(candidates)


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> SaturationFilter:
    reject_moved_thresholds(name, params)
    parse_params(NoParams, name, params)
    return SaturationFilter(name, deps.saturation)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
