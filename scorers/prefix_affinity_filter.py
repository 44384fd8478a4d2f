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
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from epp.scheduling.log_limit import LogRateLimiter
from epp.scheduling.params import parse_params, reject_moved_thresholds
from epp.scheduling.plugins import PluginConfigError, PluginDeps, PluginRegistry
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import Candidate, SchedulingContext
from scorers.precise_prefix_cache_scorer import TYPE_NAME as PRECISE_TYPE
from scorers.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from scorers.prefix_cache_scorer import TYPE_NAME as PREFIX_SCORER_TYPE
from scorers.prefix_cache_scorer import PrefixCacheScorer


@runtime_checkable
class PrefixRatios(Protocol):
    """A prefix plugin the filter can read: per candidate, the fraction of the prompt's blocks it holds."""

    def match_ratios(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]: ...


TYPE_NAME = "prefix-affinity-filter"
DECISION_KEY = "prefix_affinity"
"""Key in ctx.cycle.data of this filter's decision: {"ratio", "threshold", "applied", "kept"}."""
LOG_LINES_PER_SECOND = 20.0

logger = logging.getLogger(__name__)


class PrefixAffinityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_plugin_ref: str = Field(default=PREFIX_SCORER_TYPE, min_length=1, alias="prefixPluginRef")


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
        self._log_limit = LogRateLimiter(LOG_LINES_PER_SECOND, clock=clock)

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
        if applied:
            self._log_applied(ctx, best, kept_names)
            return kept
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "No prefix-aware routing: request %s best matching ratio %.2f <= %.2f "
                "among %d non-saturated of %d candidates",
                ctx.request.request_id,
                best,
                self.threshold,
                len(fresh),
                len(candidates),
            )
        return list(candidates)

    def _log_applied(self, ctx: SchedulingContext, best: float, kept_names: list[str]) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        dropped = self._log_limit.acquire()
        if dropped is None:
            return
        # The ratio's shape copies GIE's structured log, which the seed checks grep for.
        logger.info(
            'Do prefix-aware routing! request %s "matching ratio": " %.2f > %.2f" keeping %s%s',
            ctx.request.request_id,
            best,
            self.threshold,
            kept_names,
            f" ({dropped} similar lines suppressed)" if dropped else "",
        )


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> PrefixAffinityFilter:
    reject_moved_thresholds(name, params)
    p = parse_params(PrefixAffinityParams, name, params)
    ref = p.prefix_plugin_ref
    prefix = deps.plugins.get(ref)
    if prefix is None:
        raise PluginConfigError(
            f"plugin {name!r}: parameter 'prefixPluginRef': no plugin named {ref!r} is defined before it "
            f"(define a {PREFIX_SCORER_TYPE!r} plugin with that name earlier in the config)"
        )
    if not isinstance(prefix, PrefixCacheScorer | PrecisePrefixCacheScorer):
        raise PluginConfigError(
            f"plugin {name!r}: parameter 'prefixPluginRef': plugin {ref!r} is a "
            f"{type(prefix).__name__}, not a {PREFIX_SCORER_TYPE!r} or {PRECISE_TYPE!r}"
        )
    return PrefixAffinityFilter(name, prefix, p.threshold, deps.saturation)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
