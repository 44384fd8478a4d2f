"""A scheduling profile: filters, then weighted scorers, then one picker; plus request lifecycle hooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.scheduling.plugins import (
    Filter,
    FirstToken,
    Picker,
    PluginConfigError,
    PreRequest,
    RequestFailed,
    ResponseComplete,
    ResponseStarted,
    Scorer,
)


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


@dataclass(slots=True)
class SchedulingProfile:
    """The plugins of one profile in the order they run.

    The scheduler runs filters, scorers and the picker; the request director calls the hook lists as the
    request goes out and its response comes back. `prefix_scorer` names the scorer whose scores are
    prefix-cache match ratios (0..1); the scheduler reports the picked endpoint's value as
    `SchedulingResult.prefix_match_ratio`.
    """

    name: str
    picker: Picker
    filters: list[Filter] = field(default_factory=list)
    scorers: list[WeightedScorer] = field(default_factory=list)
    prefix_scorer: str | None = None
    pre_requests: list[PreRequest] = field(default_factory=list)
    response_started: list[ResponseStarted] = field(default_factory=list)
    first_tokens: list[FirstToken] = field(default_factory=list)
    response_completes: list[ResponseComplete] = field(default_factory=list)
    request_failures: list[RequestFailed] = field(default_factory=list)


def assemble_profile(
    name: str, plugins: Sequence[tuple[object, float]], prefix_scorer: str | None = None
) -> SchedulingProfile:
    """Use each plugin in every role it implements, keeping the listed order within each role.

    `plugins` holds (instance, weight) pairs; the weight only matters for scorers. A profile needs exactly one
    picker, and every plugin must implement at least one role.
    """
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    pickers: list[Picker] = []
    pre: list[PreRequest] = []
    started: list[ResponseStarted] = []
    first: list[FirstToken] = []
    complete: list[ResponseComplete] = []
    failed: list[RequestFailed] = []
    # Every role but the scorer's (which carries a weight): the protocol and the list it fills.
    roles: list[tuple[type, list[Any]]] = [
        (Filter, filters),
        (Picker, pickers),
        (PreRequest, pre),
        (ResponseStarted, started),
        (FirstToken, first),
        (ResponseComplete, complete),
        (RequestFailed, failed),
    ]
    for plugin, weight in plugins:
        has_role = False
        if isinstance(plugin, Scorer):
            scorers.append(WeightedScorer(plugin, weight))
            has_role = True
        for protocol, bucket in roles:
            if isinstance(plugin, protocol):
                bucket.append(plugin)
                has_role = True
        if not has_role:
            raise PluginConfigError(
                f"profile {name!r}: plugin {getattr(plugin, 'name', plugin)!r} implements none of "
                "filter, scorer, picker, pre-request, response-started, first-token, response-complete, "
                "request-failed"
            )
    if len(pickers) != 1:
        found = ", ".join(repr(p.name) for p in pickers) or "none"
        raise PluginConfigError(f"profile {name!r}: needs exactly one picker, found {len(pickers)} ({found})")
    if prefix_scorer is not None and prefix_scorer not in {w.scorer.name for w in scorers}:
        prefix_scorer = None
    return SchedulingProfile(
        name,
        pickers[0],
        filters,
        scorers,
        prefix_scorer,
        pre_requests=pre,
        response_started=started,
        first_tokens=first,
        response_completes=complete,
        request_failures=failed,
    )
