"""`prefill-affinity-filter`: prefix affinity that holds until the warm pod's estimated wait is too long.

Like `prefix-affinity-filter`, it keeps only the pods with the best prefix match when that match is above
`threshold` and the pod is not saturated (the scheduler's one SaturationDetector). Unlike it, it does not
wait for the warm pod's queue to reach the saturation threshold in *requests*: it compares estimated waits
for the first token in *tokens*, from `prefill-load-scorer` (`loadPluginRef`): the warm pod's backlog plus
this request's uncached part there, against the quickest other pod's backlog plus the whole uncached prompt
there, each at the pod's learned prefill rate. Affinity holds while

    warm_wait <= cold_wait * (1 + waitBound) + waitBoundSeconds

and is broken otherwise: every candidate passes and the profile's scorers (the prefill-load scorer first)
pick, which usually means a colder pod that will be warm for the next request. A hot shared prefix thus
spreads over more pods as its load grows instead of piling onto the pods that saw it first. The bound buys
not computing the prefix twice with some of this request's latency; on an idle pod (nothing in flight,
queued or scraped as running or waiting) the computing costs no other request anything, so affinity is
also broken when an idle pod's estimated wait is below the warm pods' (`idlePodsBreakAffinity`).

The per-request comparison cannot see that copying a *shared* prefix to another pod is paid once and frees
the warm pods for good, so at moderate load the pods that first saw a system prompt would keep every new
user while the others idle. Hence a second rule: when the match ends at a block at least
`hotPrefixRequests` recent requests (a count decaying with a 30 s half-life) also ended at, every warm pod
has requests in flight, and some pod lacking the prefix is idle (nothing in flight from epp, nothing queued
in tokens, nothing running or waiting at its last scrape), only the idle pods pass, those whose estimated
wait is at most `hotSpreadWaitRatio` (4) times the warm pods' (a 50K-character document is not worth
copying for one question to a pod that is idle but needs seconds to prefill it). A returning user's own
history ends at a block no one else reaches, so conversations stay put. `hotPrefixRequests: 0` turns it off.

`prefixPluginRef` names a `prefix-cache-scorer` or a `precise-prefix-cache-scorer` (what the pods' KV events
say they hold; use the load plugin's one). It is an affinity filter: a retry with relaxed affinity skips it.
Prefix-routed decisions log GIE's line (`Do prefix-aware routing!`), broken ones `Prefix affinity broken`,
spread ones `Hot prefix spread`, at INFO and at most LOG_LINES_PER_SECOND a second; the rest at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import Field

from epp.scheduling.params import parse_params, reject_moved_thresholds
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import Candidate, SchedulingContext
from scorers.hot_prefixes import HotPrefixes
from scorers.plugin_refs import resolve_plugin_ref
from scorers.prefill_load_scorer import TYPE_NAME as LOAD_SCORER_TYPE
from scorers.prefill_load_scorer import PrefillLoadScorer, PrefixPlugin, resolve_prefix
from scorers.prefix_affinity_common import LOG_LINES_PER_SECOND, AffinityParams, DecisionLog, best_matches

TYPE_NAME = "prefill-affinity-filter"
DECISION_KEY = "prefill_affinity"
"""Key in ctx.cycle.data of this filter's decision: ratio, applied, broken (and broken_by: wait, idle),
warm_wait_s, cold_wait_s, kept, spread."""

logger = logging.getLogger(__name__)


class PrefillAffinityParams(AffinityParams):
    wait_bound: float = Field(default=0.25, ge=0.0, le=100.0, alias="waitBound")
    wait_bound_seconds: float = Field(default=0.0, ge=0.0, le=3600.0, alias="waitBoundSeconds")
    hot_prefix_requests: float = Field(default=3.0, ge=0.0, le=1e6, alias="hotPrefixRequests")
    hot_spread_wait_ratio: float = Field(default=4.0, ge=1.0, le=1e6, alias="hotSpreadWaitRatio")
    idle_pods_break_affinity: bool = Field(default=True, strict=True, alias="idlePodsBreakAffinity")
    load_plugin_ref: str = Field(default=LOAD_SCORER_TYPE, min_length=1, alias="loadPluginRef")


class PrefillAffinityFilter:
    affinity = True  # narrows by preference, not need: skipped when a retry relaxes affinity

    def __init__(
        self,
        name: str,
        prefix: PrefixPlugin,
        load: PrefillLoadScorer,
        threshold: float = 0.5,
        wait_bound: float = 0.25,
        wait_bound_seconds: float = 0.0,
        hot_prefix_requests: float = 3.0,
        hot_spread_wait_ratio: float = 4.0,
        idle_pods_break_affinity: bool = True,
        saturation: SaturationDetector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.load = load
        self.threshold = threshold
        self.wait_bound = wait_bound
        self.wait_bound_seconds = wait_bound_seconds
        self.hot_prefix_requests = hot_prefix_requests
        self.hot_spread_wait_ratio = hot_spread_wait_ratio
        self.idle_pods_break_affinity = idle_pods_break_affinity
        self.saturation = saturation or SaturationDetector()
        self._clock = clock
        self._hot = HotPrefixes()
        self._decisions = DecisionLog(logger, LOG_LINES_PER_SECOND, clock)

    def filter(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> list[Candidate]:
        best, warm, fresh = best_matches(self.prefix, self.saturation, ctx, candidates, self.threshold)
        decision: dict[str, Any] = {"ratio": best, "threshold": self.threshold, "applied": False}
        ctx.cycle.data[DECISION_KEY] = decision
        if not warm:
            decision.update(broken=False, kept=[])
            self._decisions.not_routed(ctx, best, self.threshold, fresh, len(candidates))
            return list(candidates)
        waits = self.load.estimated_waits(ctx, candidates)
        warm_names = {c.endpoint.name for c in warm}
        warm_wait = min(waits[n] for n in warm_names)
        cold = [w for n, w in waits.items() if n not in warm_names]
        cold_wait = min(cold) if cold else None
        limit = None if cold_wait is None else cold_wait * (1.0 + self.wait_bound) + self.wait_bound_seconds
        decision.update(warm_wait_s=warm_wait, cold_wait_s=cold_wait)
        broken_by = None
        if limit is not None and warm_wait > limit:
            broken_by = "wait"
        elif (
            cold_wait is not None
            and cold_wait < warm_wait  # (the walk over the candidates only when it can matter)
            and self._idle_is_quicker(candidates, warm_names, waits, warm_wait)
        ):
            broken_by = "idle"
        if broken_by is not None:
            decision.update(broken=True, broken_by=broken_by, kept=[])
            self._log(broken_by, ctx, best, warm_wait, cold_wait, sorted(warm_names))
            return list(candidates)
        idle = self._idle_for_hot_prefix(ctx, candidates, warm, warm_names)
        if idle:  # a copy that would make this request wait many times longer than the warm pod
            most = warm_wait * self.hot_spread_wait_ratio
            idle = [c for c in idle if waits[c.endpoint.name] <= most]
        if idle:
            idle_names = [c.endpoint.name for c in idle]
            decision.update(applied=True, broken=False, spread=True, kept=idle_names)
            self._log("spread", ctx, best, warm_wait, cold_wait, idle_names)
            return idle
        # The warm pods whose own wait is within the bound (all of them when no other pod is a candidate).
        kept = [c for c in warm if limit is None or waits[c.endpoint.name] <= limit]
        kept_names = [c.endpoint.name for c in kept]
        decision.update(applied=True, broken=False, kept=kept_names)
        self._log("applied", ctx, best, warm_wait, cold_wait, kept_names)
        return kept

    def _idle_is_quicker(
        self,
        candidates: Sequence[Candidate],
        warm_names: set[str],
        waits: Mapping[str, float],
        warm_wait: float,
    ) -> bool:
        """Whether a pod lacking the prefix, with nothing to do, would answer sooner than the warm pods.

        The wait bound trades this request's latency for not computing the prefix twice; an idle pod's
        compute costs no other request anything, so there the trade buys nothing (a burst of new users
        behind one system prompt on an empty fleet would otherwise pair up on the first pod).
        """
        if not self.idle_pods_break_affinity:
            return False
        return any(
            waits[c.endpoint.name] < warm_wait and c.endpoint.name not in warm_names and self._is_idle(c)
            for c in candidates
        )

    def _is_idle(self, c: Candidate) -> bool:
        """Nothing in flight from epp, nothing queued in tokens, nothing running or waiting at its last
        scrape, and not saturated."""
        return (
            c.in_flight == 0
            and c.metrics.running + c.metrics.waiting == 0
            and not self.saturation.is_saturated(c)
            and self.load.pending_tokens(c.endpoint.name) == 0.0
        )

    def _idle_for_hot_prefix(
        self,
        ctx: SchedulingContext,
        candidates: Sequence[Candidate],
        warm: Sequence[Candidate],
        warm_names: set[str],
    ) -> list[Candidate]:
        """The idle pods lacking the prefix, when it is hot (shared by many recent requests) and every warm
        pod is busy: copying a shared prefix to an idle pod costs one prefill and frees the warm pods for
        good, which the per-request wait comparison cannot see. Empty otherwise."""
        if self.hot_prefix_requests <= 0 or len(warm) == len(candidates):
            return []
        key = self.prefix.matched_key(ctx, warm[0].endpoint.name)
        if key is None:
            return []
        # (Counts decay continuously: n requests in quick succession count a hair under n.)
        if self._hot.touch(key, self._clock()) + 1e-3 < self.hot_prefix_requests:
            return []
        if any(c.in_flight == 0 for c in warm):
            return []
        is_idle = self._is_idle
        return [c for c in candidates if c.endpoint.name not in warm_names and is_idle(c)]

    def _log(
        self,
        what: str,
        ctx: SchedulingContext,
        best: float,
        warm_wait: float,
        cold_wait: float | None,
        names: list[str],
    ) -> None:
        suffix = self._decisions.info_slot()
        if suffix is None:
            return
        cold = "none" if cold_wait is None else f"{cold_wait:.3f}s"
        if what == "applied":
            detail = f" (estimated wait {warm_wait:.3f}s, other pods {cold})"
            self._decisions.routed(ctx, best, self.threshold, names, suffix, detail)
        elif what == "spread":
            logger.info(
                "Hot prefix spread: request %s matching ratio %.2f on busy pods, sent to idle %s%s",
                ctx.request.request_id,
                best,
                names,
                suffix,
            )
        elif what == "idle":
            logger.info(
                "Prefix affinity broken: request %s matching ratio %.2f on %s, estimated wait %.3fs > "
                "an idle pod's %s%s",
                ctx.request.request_id,
                best,
                names,
                warm_wait,
                cold,
                suffix,
            )
        else:
            logger.info(
                "Prefix affinity broken: request %s matching ratio %.2f on %s, estimated wait %.3fs > "
                "other pods' %s x %.2f + %.3fs%s",
                ctx.request.request_id,
                best,
                names,
                warm_wait,
                cold,
                1.0 + self.wait_bound,
                self.wait_bound_seconds,
                suffix,
            )


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> PrefillAffinityFilter:
    reject_moved_thresholds(name, params)
    p = parse_params(PrefillAffinityParams, name, params)
    prefix = resolve_prefix(name, p.prefix_plugin_ref, deps)
    load = resolve_plugin_ref(
        name, "loadPluginRef", p.load_plugin_ref, deps, (PrefillLoadScorer,), (LOAD_SCORER_TYPE,)
    )
    return PrefillAffinityFilter(
        name,
        prefix,
        load,
        p.threshold,
        p.wait_bound,
        p.wait_bound_seconds,
        p.hot_prefix_requests,
        p.hot_spread_wait_ratio,
        p.idle_pods_break_affinity,
        deps.saturation,
    )


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
