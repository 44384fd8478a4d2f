"""`saturation-filter`: steer away from saturated pods, and shed sheddable requests when all are saturated.

- Critical: every candidate passes; critical requests are never shed.
- Standard: non-saturated candidates if any, else all (queue rather than fail).
- Sheddable: only non-saturated candidates; if every candidate is saturated the request is shed (429).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.scheduling.params import parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.types import Candidate, Criticality, SchedulingContext, ShedError
from scorers.saturation import SaturationThresholds

TYPE_NAME = "saturation-filter"


class SaturationFilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    queue_depth_threshold: int = Field(default=5, ge=1, alias="queueDepthThreshold", strict=True)
    kv_cache_util_threshold: float = Field(default=0.8, gt=0.0, le=1.0, alias="kvCacheUtilThreshold")


class SaturationFilter:
    def __init__(self, name: str = TYPE_NAME, thresholds: SaturationThresholds | None = None) -> None:
        self.name = name
        self.thresholds = thresholds or SaturationThresholds()

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
        criticality = ctx.request.criticality
        if criticality is Criticality.CRITICAL:
            return list(candidates)
        is_saturated = self.thresholds.is_saturated
        fresh = [c for c in candidates if not is_saturated(c)]
        if fresh:
            return fresh
        if criticality is Criticality.SHEDDABLE:
            t = self.thresholds
            raise ShedError(
                f"all {len(candidates)} candidate endpoints are saturated "
                f"(waiting >= {t.queue_depth} or KV cache >= {t.kv_cache_usage}); sheddable request shed"
            )
        return list(candidates)


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> SaturationFilter:
    p = parse_params(SaturationFilterParams, name, params)
    return SaturationFilter(name, SaturationThresholds(p.queue_depth_threshold, p.kv_cache_util_threshold))


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
