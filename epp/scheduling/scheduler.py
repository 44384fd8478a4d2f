"""The scheduler: runs one profile over the datastore's schedulable endpoints and returns the pick.

This is the per-request hot path, so it is plain loops over lists and dicts. It does not count the request
as in flight; the caller acquires and releases the picked endpoint on the datastore.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from epp.datastore import Datastore, EndpointState
from epp.scheduling.plugins import ScoredCandidate
from epp.scheduling.profile import SchedulingProfile
from epp.scheduling.types import (
    Candidate,
    LLMRequest,
    NoEndpointError,
    SchedulingContext,
    SchedulingError,
    SchedulingResult,
)

logger = logging.getLogger(__name__)


class UnknownProfileError(SchedulingError, LookupError):
    """`schedule` was asked for a profile the scheduler does not have: a configuration mistake."""

    code = "unknown_profile"


class Scheduler:
    """Schedules requests with one of its profiles; the first profile is the default."""

    def __init__(
        self, datastore: Datastore, profiles: SchedulingProfile | Sequence[SchedulingProfile]
    ) -> None:
        profile_list = [profiles] if isinstance(profiles, SchedulingProfile) else list(profiles)
        if not profile_list:
            raise ValueError("a scheduler needs at least one profile")
        self.datastore = datastore
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

    def schedule(self, request: LLMRequest, profile: str | None = None) -> SchedulingResult:
        """Pick an endpoint for `request`; raises NoEndpointError (503) or ShedError (429) when none fits."""
        prof = self.profile(profile)
        states = self.datastore.schedulable()
        if not states:
            raise NoEndpointError("no schedulable endpoint: none known, or all have stale or failed metrics")
        candidates = self._candidates(states)
        ctx = SchedulingContext(request)

        for f in prof.filters:
            before = len(candidates)
            candidates = f.filter(ctx, candidates)
            if not candidates:
                raise NoEndpointError(f"filter {f.name!r} removed all {before} candidate endpoints")

        names = [c.endpoint.name for c in candidates]
        totals = dict.fromkeys(names, 0.0)
        scores: dict[str, dict[str, float]] = {}
        for ws in prof.scorers:
            raw = ws.scorer.score(ctx, candidates)
            scores[ws.scorer.name] = raw
            weight = ws.weight
            if weight:
                for n in names:
                    totals[n] += weight * raw.get(n, 0.0)

        picked = prof.picker.pick(ctx, self._scored(candidates, totals))
        for hook in prof.post_picks:
            hook.on_pick(ctx, picked)

        picked_name = picked.endpoint.name
        ratio = None
        if prof.prefix_scorer is not None:
            ratio = scores[prof.prefix_scorer].get(picked_name)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s profile %s candidates %s after filters %s scores %s totals %s picked %s",
                request.request_id,
                prof.name,
                [s.endpoint.name for s in states],
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
            prefix_match_ratio=ratio,
        )
