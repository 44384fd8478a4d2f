"""`prefix-affinity-filter`: when a non-saturated pod has a strong prefix match, keep only the best such pods.

Among non-saturated candidates, if the best prefix match ratio is strictly above `threshold`, only the
non-saturated candidates with that ratio pass ("prefix-aware routing"); otherwise all candidates pass and the
profile's scorers (e.g. least-request) decide. Match ratios come from the `prefix-cache-scorer` or
`precise-prefix-cache-scorer` instance named by `prefixPluginRef`, so the prompt is matched once per
cycle; "saturated" is the scheduler's one SaturationDetector. It is an affinity filter: a retry with
relaxed affinity skips it.

Each prefix-routed decision is logged at INFO as GIE does (`Do prefix-aware routing!` with
`"matching ratio": " 0.54 > 0.50"`), at most LOG_LINES_PER_SECOND a second; the others at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from epp.scheduling.params import parse_params, reject_moved_thresholds
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import Candidate, SchedulingContext
from scorers.plugin_refs import resolve_plugin_ref
from scorers.precise_prefix_cache_scorer import TYPE_NAME as PRECISE_TYPE
from scorers.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from scorers.prefix_affinity_common import (
    LOG_LINES_PER_SECOND,
    AffinityParams,
    DecisionLog,
    PrefixRatios,
    best_matches,
)
from scorers.prefix_cache_scorer import TYPE_NAME as PREFIX_SCORER_TYPE
from scorers.prefix_cache_scorer import PrefixCacheScorer

TYPE_NAME = "prefix-affinity-filter"
DECISION_KEY = "prefix_affinity"
"""Key in ctx.cycle.data of this filter's decision: {"ratio", "threshold", "applied", "kept"}."""

logger = logging.getLogger(__name__)


class PrefixAffinityFilter:
    affinity = True  # narrows by preference, not need: skipped when a retry relaxes affinity

    def __init__(
        self,
        name: str,
        prefix: PrefixRatios,
        threshold: float = 0.5,
        saturation: SaturationDetector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.threshold = threshold
        self.saturation = saturation or SaturationDetector()
        self._log = DecisionLog(logger, LOG_LINES_PER_SECOND, clock)

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
        best, kept, fresh = best_matches(self.prefix, self.saturation, ctx, candidates, self.threshold)
        applied = bool(kept)
        kept_names = [c.endpoint.name for c in kept]
        ctx.cycle.data[DECISION_KEY] = {
            "ratio": best,
            "threshold": self.threshold,
            "applied": applied,
            "kept": kept_names,
        }
        if applied:
            suffix = self._log.info_slot()
            if suffix is not None:
                self._log.routed(ctx, best, self.threshold, kept_names, suffix)
            return kept
        self._log.not_routed(ctx, best, self.threshold, fresh, len(candidates))
        return list(candidates)


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> PrefixAffinityFilter:
    reject_moved_thresholds(name, params)
    p = parse_params(AffinityParams, name, params)  # no parameters of its own
    prefix = resolve_plugin_ref(
        name,
        "prefixPluginRef",
        p.prefix_plugin_ref,
        deps,
        (PrefixCacheScorer, PrecisePrefixCacheScorer),
        (PREFIX_SCORER_TYPE, PRECISE_TYPE),
    )
    return PrefixAffinityFilter(name, prefix, p.threshold, deps.saturation)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
