"""`lora-affinity-scorer`: prefer pods that already have the requested LoRA adapter loaded.

Tiers, from the pod's scraped `vllm:lora_requests_info`: the adapter is running (1.0); requests for it are
waiting there (0.8); a slot under `max_lora` is free of running and waiting adapters (0.5); otherwise 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.params import NoParams, parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.types import Candidate, SchedulingContext

TYPE_NAME = "lora-affinity-scorer"

LOADED = 1.0  # adapter is running: no load needed
LOADING = 0.8  # adapter is waiting to be loaded: it will be there soon
FREE_SLOT = 0.5  # pod can load it without evicting another adapter
NO_SLOT = 0.0


def lora_score(candidate: Candidate, adapter: str) -> float:
    m = candidate.metrics
    if adapter in m.running_loras:
        return LOADED
    if adapter in m.waiting_loras:
        return LOADING
    # Adapters waiting on the pod will take slots too, so only what neither uses is free.
    if m.max_lora is None or len(m.running_loras | m.waiting_loras) < m.max_lora:
        return FREE_SLOT
    return NO_SLOT


class LoraAffinityScorer:
    """Neutral (1.0 for all) when the request names no adapter."""

    def __init__(self, name: str = TYPE_NAME) -> None:
        self.name = name

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        adapter = ctx.request.lora_adapter
        if adapter is None:
            return {c.endpoint.name: 1.0 for c in candidates}
        return {c.endpoint.name: lora_score(c, adapter) for c in candidates}


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> LoraAffinityScorer:
    parse_params(NoParams, name, params)
    return LoraAffinityScorer(name)


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
