"""What `prefix-affinity-filter` and `prefill-affinity-filter` share: their common parameters, the choice
of the best-matching non-saturated pods, and their rate-limited log lines (`Do prefix-aware routing!`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from epp.scheduling.log_limit import LogRateLimiter
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import Candidate, SchedulingContext
from scorers.prefix_cache_scorer import TYPE_NAME as PREFIX_SCORER_TYPE

LOG_LINES_PER_SECOND = 20.0


@runtime_checkable
class PrefixRatios(Protocol):
    """A prefix plugin the filters can read: per candidate, the fraction of the prompt's blocks it holds."""

    def match_ratios(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]: ...


class AffinityParams(BaseModel):
    """The parameters both filters take."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_plugin_ref: str = Field(default=PREFIX_SCORER_TYPE, min_length=1, alias="prefixPluginRef")


def best_matches(
    prefix: PrefixRatios,
    saturation: SaturationDetector,
    ctx: SchedulingContext,
    candidates: Sequence[Candidate],
    threshold: float,
) -> tuple[float, list[Candidate], int]:
    """(best ratio, the pods with it, how many pods are not saturated) over the non-saturated candidates;
    the pods are none unless the best ratio is strictly above `threshold`."""
    fresh = saturation.unsaturated(candidates, ctx)
    if not fresh:
        return 0.0, [], 0
    ratios = prefix.match_ratios(ctx, fresh)
    best = max(ratios.values())
    kept = [c for c in fresh if ratios[c.endpoint.name] == best] if best > threshold else []
    return best, kept, len(fresh)


class DecisionLog:
    """A filter's decision lines, in its own logger: INFO ones at most `per_second` a second."""

    def __init__(
        self,
        logger: logging.Logger,
        per_second: float = LOG_LINES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self._limit = LogRateLimiter(per_second, clock=clock)

    def info_slot(self) -> str | None:
        """None when an INFO line must not be written now; else the suffix it ends with (what was dropped)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return None
        dropped = self._limit.acquire()
        if dropped is None:
            return None
        return f" ({dropped} similar lines suppressed)" if dropped else ""

    def routed(
        self,
        ctx: SchedulingContext,
        best: float,
        threshold: float,
        kept: list[str],
        suffix: str,
        detail: str = "",
    ) -> None:
        """The INFO line of a prefix-routed decision (`suffix` from info_slot, `detail` after the pods)."""
        # The ratio's shape copies GIE's structured log, which the seed checks grep for.
        self.logger.info(
            'Do prefix-aware routing! request %s "matching ratio": " %.2f > %.2f" keeping %s%s%s',
            ctx.request.request_id,
            best,
            threshold,
            kept,
            detail,
            suffix,
        )

    def not_routed(
        self, ctx: SchedulingContext, best: float, threshold: float, fresh: int, candidates: int
    ) -> None:
        """The DEBUG line of a decision that let every candidate pass: the match was not good enough."""
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "No prefix-aware routing: request %s best matching ratio %.2f <= %.2f "
                "among %d non-saturated of %d candidates",
                ctx.request.request_id,
                best,
                threshold,
                fresh,
                candidates,
            )
