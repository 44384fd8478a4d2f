"""`prefix-affinity-filter`: when a non-saturated pod has a strong prefix match, keep only the best such pods.

Among non-saturated candidates, if the best prefix match ratio is strictly above `threshold`, only the
non-saturated candidates with that ratio pass ("prefix-aware routing"); otherwise all candidates pass and the
profile's scorers (e.g. least-request) decide. Match ratios come from the `prefix-cache-scorer` instance named
by `prefixPluginRef`, so the prompt is hashed once per cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.scheduling.params import parse_params
from epp.scheduling.plugins import PluginConfigError, PluginDeps, PluginRegistry
from epp.scheduling.types import Candidate, SchedulingContext
from scorers.prefix_cache_scorer import TYPE_NAME as PREFIX_SCORER_TYPE
from scorers.prefix_cache_scorer import PrefixCacheScorer
from scorers.saturation import SaturationThresholds

TYPE_NAME = "prefix-affinity-filter"
DECISION_KEY = "prefix_affinity"
"""Key in ctx.cycle.data of this filter's decision: {"ratio", "threshold", "applied", "kept"}."""

logger = logging.getLogger(__name__)


class PrefixAffinityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_plugin_ref: str = Field(default=PREFIX_SCORER_TYPE, min_length=1, alias="prefixPluginRef")
    queue_depth_threshold: int = Field(default=5, ge=1, strict=True, alias="queueDepthThreshold")
    kv_cache_util_threshold: float = Field(default=0.8, gt=0.0, le=1.0, alias="kvCacheUtilThreshold")


class PrefixAffinityFilter:
    def __init__(
        self,
        name: str,
        prefix: PrefixCacheScorer,
        threshold: float = 0.5,
        saturation: SaturationThresholds | None = None,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.threshold = threshold
        self.saturation = saturation or SaturationThresholds()

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
        is_saturated = self.saturation.is_saturated
        fresh = [c for c in candidates if not is_saturated(c)]
        best = 0.0
        kept: list[Candidate] = []
        if fresh:
            ratios = self.prefix.match_ratios(ctx, fresh)
            best = max(ratios.values())
            if best > self.threshold:
                kept = [c for c in fresh if ratios[c.endpoint.name] == best]
        applied = bool(kept)
        kept_names = [c.endpoint.name for c in kept]
        ctx.cycle.data[DECISION_KEY] = {
            "ratio": best,
            "threshold": self.threshold,
            "applied": applied,
            "kept": kept_names,
        }
        if logger.isEnabledFor(logging.DEBUG):
            if applied:
                logger.debug(
                    "Do prefix-aware routing! request %s matching ratio %.2f > %.2f, keeping %s",
                    ctx.request.request_id,
                    best,
                    self.threshold,
                    kept_names,
                )
            else:
                logger.debug(
                    "No prefix-aware routing: request %s best matching ratio %.2f <= %.2f "
                    "among %d non-saturated of %d candidates",
                    ctx.request.request_id,
                    best,
                    self.threshold,
                    len(fresh),
                    len(candidates),
                )
        return kept if applied else list(candidates)


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> PrefixAffinityFilter:
    p = parse_params(PrefixAffinityParams, name, params)
    ref = p.prefix_plugin_ref
    prefix = deps.plugins.get(ref)
    if prefix is None:
        raise PluginConfigError(
            f"plugin {name!r}: parameter 'prefixPluginRef': no plugin named {ref!r} is defined before it "
            f"(define a {PREFIX_SCORER_TYPE!r} plugin with that name earlier in the config)"
        )
    if not isinstance(prefix, PrefixCacheScorer):
        raise PluginConfigError(
            f"plugin {name!r}: parameter 'prefixPluginRef': plugin {ref!r} is a "
            f"{type(prefix).__name__}, not a {PREFIX_SCORER_TYPE!r}"
        )
    saturation = SaturationThresholds(p.queue_depth_threshold, p.kv_cache_util_threshold)
    return PrefixAffinityFilter(name, prefix, p.threshold, saturation)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
