"""The scheduler: runs one profile over the datastore's schedulable endpoints and returns the pick.

This is the per-request hot path, so it is plain loops over lists and dicts. It does not count the request
as in flight and calls no lifecycle hook; the request director does both around sending the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence

from epp.datastore import Datastore, EndpointState
from epp.scheduling.plugins import (
    EXTENSION_FILTER,
    EXTENSION_PICKER,
    EXTENSION_SCORER,
    PluginTimer,
    ScoredCandidate,
)
from epp.scheduling.profile import SchedulingProfile
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.types import (
    Candidate,
    LLMRequest,
    NoEndpointError,
    SchedulingContext,
    SchedulingError,
    SchedulingResult,
)

logger = logging.getLogger(__name__)

PLUGIN_TIMING_SAMPLE = 8  # time the plugins of one decision in this many


class UnknownProfileError(SchedulingError, LookupError):
    """`schedule` was asked for a profile the scheduler does not have: a configuration mistake."""

    code = "unknown_profile"


class Scheduler:
    """Schedules requests with one of its profiles; the first profile is the default.

    `saturation` is the detector the plugins were built with (exposed for admission control); `timer`, when
    set, is told how long each filter, scorer and picker call took, with the plugin's config type from
    `plugin_types` (instance name -> type; the class name when absent).
    """

    def __init__(
        self,
        datastore: Datastore,
        profiles: SchedulingProfile | Sequence[SchedulingProfile],
        *,
        saturation: SaturationDetector | None = None,
        timer: PluginTimer | None = None,
        plugin_types: Mapping[str, str] | None = None,
    ) -> None:
        profile_list = [profiles] if isinstance(profiles, SchedulingProfile) else list(profiles)
        if not profile_list:
            raise ValueError("a scheduler needs at least one profile")
        self.datastore = datastore
        self.saturation = saturation if saturation is not None else SaturationDetector()
        self.timer = timer
        self._decisions = 0
        self.plugin_types: dict[str, str] = dict(plugin_types or {})
        self.profiles: dict[str, SchedulingProfile] = {}
        for p in profile_list:
            if p.name in self.profiles:
                raise ValueError(f"profile {p.name!r} given twice")
            self.profiles[p.name] = p
        self.default_profile = profile_list[0].name
        # Candidates are immutable, so one is reused until its pod's snapshot or in-flight count changes:
        # building 64 frozen dataclasses per decision cost more than the rest of the framework together.
        self._candidate_cache: dict[str, Candidate] = {}
        self._scored_cache: dict[str, ScoredCandidate] = {}

    def profile(self, name: str | None = None) -> SchedulingProfile:
        if name is None:
            name = self.default_profile
        found = self.profiles.get(name)
        if found is None:
            raise UnknownProfileError(
                f"unknown scheduling profile {name!r} (known: {', '.join(self.profiles)})"
            )
        return found

    def plugin_type(self, plugin: object) -> str:
        name = getattr(plugin, "name", "")
        return self.plugin_types.get(name) or type(plugin).__name__

    def _candidates(self, states: Sequence[EndpointState]) -> list[Candidate]:
        cache = self._candidate_cache
        if len(cache) > 2 * len(states) + 16:  # endpoints come and go; drop the departed ones now and then
            cache.clear()
        out = []
        for state in states:
            endpoint, metrics, in_flight = state.endpoint, state.metrics, state.in_flight
            if metrics is None:  # never for a schedulable state; keeps the type checker honest
                continue
            c = cache.get(endpoint.name)
            if (
                c is None
                or c.metrics is not metrics
                or c.in_flight != in_flight
                or c.endpoint is not endpoint
            ):
                c = cache[endpoint.name] = Candidate(endpoint, metrics, in_flight)
            out.append(c)
        return out

    def _scored(self, candidates: Sequence[Candidate], totals: dict[str, float]) -> list[ScoredCandidate]:
        # Same reuse as for candidates: most pods' totals stay the same from one decision to the next.
        cache = self._scored_cache
        if len(cache) > 2 * len(candidates) + 16:
            cache.clear()
        out = []
        for c in candidates:
            name = c.endpoint.name
            total = totals[name]
            sc = cache.get(name)
            if sc is None or sc.candidate is not c or sc.score != total:
                sc = cache[name] = ScoredCandidate(c, total)
            out.append(sc)
        return out

    def schedule(
        self,
        request: LLMRequest,
        profile: str | None = None,
        *,
        excluded: Collection[str] = (),
        relax_affinity: bool = False,
        context: SchedulingContext | None = None,
    ) -> SchedulingResult:
        """Pick an endpoint for `request`; raises NoEndpointError (503) or ShedError (429) when none fits.

        For a retry: `excluded` names endpoints to leave out before any filter (those already tried),
        `relax_affinity` skips filters that declare `affinity = True`, and `context` is the previous cycle's
        SchedulingResult.context, so work cached in its cycle state (the prompt's hashes) is not redone.
        When an affinity filter leaves a single pod, neither the other scorers nor the picker run: the
        result's `scores` then hold the prefix scorer's alone.
        """
        prof = self.profile(profile)
        if context is None:
            ctx = SchedulingContext(request)
        elif context.request is not request:
            raise ValueError("context belongs to another request")
        else:
            ctx = context
        states = self.datastore.schedulable()
        if not states:
            raise NoEndpointError("no schedulable endpoint: none known, or all have stale or failed metrics")
        candidates = self._candidates(states)
        if excluded:
            candidates = [c for c in candidates if c.endpoint.name not in excluded]
            if not candidates:
                raise NoEndpointError(
                    f"no schedulable endpoint left after excluding {len(excluded)} already tried"
                )
        # Plugin calls are timed on one decision in PLUGIN_TIMING_SAMPLE: a histogram observation per plugin
        # on every decision cost more than some plugins themselves.
        timer = self.timer
        if self._decisions % PLUGIN_TIMING_SAMPLE:
            timer = None
        self._decisions += 1
        clock = time.perf_counter
        narrowed = False
        before_affinity: list[Candidate] | None = None
        affinity_at = 0

        for at, f in enumerate(prof.filters):
            affinity = getattr(f, "affinity", False)
            if affinity:
                if relax_affinity:
                    continue
                if before_affinity is None:
                    before_affinity, affinity_at = candidates, at
            before = len(candidates)
            if timer is None:
                candidates = f.filter(ctx, candidates)
            else:
                t0 = clock()
                candidates = f.filter(ctx, candidates)
                timer.observe_plugin(EXTENSION_FILTER, self.plugin_type(f), f.name, clock() - t0)
            if not candidates:
                raise NoEndpointError(f"filter {f.name!r} removed all {before} candidate endpoints")
            if affinity and len(candidates) < before:
                narrowed = True

        names = [c.endpoint.name for c in candidates]
        totals = dict.fromkeys(names, 0.0)
        scores: dict[str, dict[str, float]] = {}
        # Affinity left one pod: the pick is forced, so only the prefix scorer runs (its ratio is reported).
        forced = narrowed and len(candidates) == 1
        for ws in prof.scorers:
            scorer = ws.scorer
            if forced and scorer.name != prof.prefix_scorer:
                continue
            if timer is None:
                raw = scorer.score(ctx, candidates)
            else:
                t0 = clock()
                raw = scorer.score(ctx, candidates)
                timer.observe_plugin(EXTENSION_SCORER, self.plugin_type(scorer), scorer.name, clock() - t0)
            scores[scorer.name] = _clamp_and_add(raw, names, ws.weight, totals)

        if forced:
            picked = candidates[0]
        elif timer is None:
            picked = prof.picker.pick(ctx, self._scored(candidates, totals))
        else:
            t0 = clock()
            picked = prof.picker.pick(ctx, self._scored(candidates, totals))
            picker = prof.picker
            timer.observe_plugin(EXTENSION_PICKER, self.plugin_type(picker), picker.name, clock() - t0)

        picked_name = picked.endpoint.name
        ratio = None
        if prof.prefix_scorer is not None:
            ratio = scores[prof.prefix_scorer].get(picked_name)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s profile %s candidates %s excluded %s after filters %s scores %s totals %s "
                "picked %s",
                request.request_id,
                prof.name,
                [s.endpoint.name for s in states],
                sorted(excluded),
                names,
                scores,
                totals,
                picked_name,
            )
        return SchedulingResult(
            endpoint=picked.endpoint,
            profile=prof.name,
            scores=scores,
            total_scores=totals,
            candidates_after_filters=names,
            context=ctx,
            prefix_match_ratio=ratio,
            affinity_narrowed=narrowed,
            before_affinity=before_affinity if narrowed else None,
            affinity_at=affinity_at,
        )

    def rank_relaxed(self, result: SchedulingResult, excluded: Collection[str]) -> list[str]:
        """The pods a retry without affinity would consider, best total score first: `result`'s candidates
        before its first affinity filter (the pool, the filters ahead of it and saturation applied at
        decision time) without `excluded`, through the profile's later non-affinity filters and every scorer.

        Envoy's fallbacks, listed with the pick: the same ranking as `schedule(relax_affinity=True)` without
        filtering the pool again or running the picker. Ties keep the filters' order.
        """
        candidates = result.before_affinity
        if candidates is None:
            return [n for n in result.ranked() if n not in excluded]
        prof = self.profile(result.profile)
        ctx = result.context
        candidates = [c for c in candidates if c.endpoint.name not in excluded]
        for f in prof.filters[result.affinity_at :]:
            if not candidates:
                return []
            if not getattr(f, "affinity", False):
                candidates = f.filter(ctx, candidates)
        names = [c.endpoint.name for c in candidates]
        if not names:
            return []
        totals = dict.fromkeys(names, 0.0)
        for ws in prof.scorers:
            _clamp_and_add(ws.scorer.score(ctx, candidates), names, ws.weight, totals)
        names.sort(key=lambda n: -totals[n])
        return names


def _clamp_and_add(
    raw: dict[str, float], names: Sequence[str], weight: float, totals: dict[str, float]
) -> dict[str, float]:
    """Add weight x score to each candidate's total, every score clamped to 0..1 (NaN -> 0).

    Returns the scores as clamped: `raw` itself when all are in range (the usual case: no copy), else a
    corrected copy, so a scorer's bug can neither outvote the other scorers nor show up in the reported
    scores. (One chained comparison per value measured cheaper than min/max/sum over the values.)
    """
    get = raw.get
    if weight:
        for n in names:
            v = get(n, 0.0)
            if not 0.0 <= v <= 1.0:  # NaN fails both comparisons
                # The candidates before this one had in-range scores, already added: add the rest clamped.
                fixed = _clamped(raw)
                for rest in names[names.index(n) :]:
                    totals[rest] += weight * fixed.get(rest, 0.0)
                return fixed
            totals[n] += weight * v
        return raw
    for v in raw.values():
        if not 0.0 <= v <= 1.0:
            return _clamped(raw)
    return raw


def _clamped(raw: dict[str, float]) -> dict[str, float]:
    return {n: (v if 0.0 <= v <= 1.0 else 1.0 if v > 1.0 else 0.0) for n, v in raw.items()}
