"""A scheduling profile: filters, then weighted scorers, then one picker, then PostPick hooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from epp.scheduling.plugins import Filter, Picker, PluginConfigError, PostPick, Scorer


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


@dataclass(slots=True)
class SchedulingProfile:
    """The plugins of one profile in the order they run.

    `prefix_scorer` names the scorer whose scores are prefix-cache match ratios (0..1); the scheduler reports
    the picked endpoint's value as `SchedulingResult.prefix_match_ratio`.
    """

    name: str
    picker: Picker
    filters: list[Filter] = field(default_factory=list)
    scorers: list[WeightedScorer] = field(default_factory=list)
    post_picks: list[PostPick] = field(default_factory=list)
    prefix_scorer: str | None = None


def assemble_profile(
    name: str, plugins: Sequence[tuple[object, float]], prefix_scorer: str | None = None
) -> SchedulingProfile:
    """Use each plugin in every role it implements, keeping the listed order within each role.

    `plugins` holds (instance, weight) pairs; the weight only matters for scorers. A profile needs exactly one
    picker.
    """
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    pickers: list[Picker] = []
    post_picks: list[PostPick] = []
    for plugin, weight in plugins:
        roles = 0
        if isinstance(plugin, Filter):
            filters.append(plugin)
            roles += 1
        if isinstance(plugin, Scorer):
            scorers.append(WeightedScorer(plugin, weight))
            roles += 1
        if isinstance(plugin, Picker):
            pickers.append(plugin)
            roles += 1
        if isinstance(plugin, PostPick):
            post_picks.append(plugin)
            roles += 1
        if roles == 0:
            raise PluginConfigError(
                f"profile {name!r}: plugin {getattr(plugin, 'name', plugin)!r} implements none of "
                "filter, scorer, picker, post-pick"
            )
    if len(pickers) != 1:
        found = ", ".join(repr(p.name) for p in pickers) or "none"
        raise PluginConfigError(f"profile {name!r}: needs exactly one picker, found {len(pickers)} ({found})")
    if prefix_scorer is not None and prefix_scorer not in {w.scorer.name for w in scorers}:
        prefix_scorer = None
    return SchedulingProfile(name, pickers[0], filters, scorers, post_picks, prefix_scorer)
