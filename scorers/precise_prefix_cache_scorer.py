"""`precise-prefix-cache-scorer`: score pods by the prompt blocks their KV events say they hold.

The request is tokenized as the pod will tokenize it (`tokenizer`: the simulator's, or the model's own files),
cut into blocks of the pod's block size (from its events) and keyed like epp.kv_events.precise_index keys the
pod's stored blocks. Score = leading blocks the pod holds / the prompt's full blocks. For a pod whose view is
not synced (never seen, or a gap the follower has not repaired) and for a request that cannot be tokenized,
the score is the approximate `prefix-cache-scorer`'s instead (the instance named by `prefixCachePlugin`, else
one built here that learns from this plugin's picks, with blocks aligned to the pods' KV blocks in estimated
characters: `blockAlign: tokens`, `blockSize` as the pods' size until their scrapes report it).

With `speculative` on, a pick's keys are credited to the picked pod for `speculativeTtlSeconds` until its
events confirm them, so a burst of one prefix does not scatter before the first event arrives. Replicas do not
share speculative credit: for identical decisions across replicas, turn it off (or keep the TTL short).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from epp.datastore import Endpoint
from epp.kv_events.precise_index import PreciseIndex, block_keys
from epp.scheduling.params import parse_params
from epp.scheduling.plugins import PluginConfigError, PluginDeps, PluginRegistry
from epp.scheduling.types import CLIENT_GONE, AttemptReport, Candidate, SchedulingContext
from epp.tokenization.base import PromptTokenizer
from epp.tokenization.simulated import VOCAB_SIZE, SimulatorTokenizer, Tokenizer
from scorers.plugin_refs import resolve_plugin_ref
from scorers.prefix_alignment import BlockAlignment
from scorers.prefix_cache_scorer import TYPE_NAME as PREFIX_TYPE
from scorers.prefix_cache_scorer import PrefixCacheScorer

TYPE_NAME = "precise-prefix-cache-scorer"
DEFAULT_BLOCK_SIZE = 16  # vLLM's GPU default, used for a pod until its events give its own
DEFAULT_MAX_BLOCKS = 4_096  # 64k tokens at 16 per block
DEFAULT_SPECULATIVE_TTL_S = 2.0


class PrecisePrefixParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    tokenizer: Literal["simulator", "hf-local"] = "simulator"
    model_path: str | None = Field(default=None, alias="modelPath")  # hf-local: the model directory
    # simulator: the pods' profile's BOS and vocabulary (ids are a hash modulo the vocabulary size)
    bos_token_id: int | None = Field(default=None, ge=0, strict=True, alias="bosTokenId")
    vocab_size: int = Field(default=VOCAB_SIZE, gt=0, strict=True, alias="vocabSize")
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, gt=0, strict=True, alias="blockSize")
    max_prefix_blocks_to_match: int = Field(
        default=DEFAULT_MAX_BLOCKS, gt=0, strict=True, alias="maxPrefixBlocksToMatch"
    )
    speculative: bool = Field(default=True, strict=True)
    speculative_ttl_s: float = Field(default=DEFAULT_SPECULATIVE_TTL_S, ge=0, alias="speculativeTtlSeconds")
    prefix_cache_plugin: str | None = Field(default=None, alias="prefixCachePlugin")


@dataclass(slots=True)
class PreciseMatch:
    """One request's token ids, its keys per block size, and per pod the ratio and where it came from."""

    token_ids: list[int] | None
    keys: dict[int, list[int]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    approximate: set[str] = field(default_factory=set)  # pods scored by the fallback


class PrecisePrefixCacheScorer:
    """Scorer and PreRequest/RequestFailed over a shared PreciseIndex, with an approximate fallback."""

    def __init__(
        self,
        name: str,
        index: PreciseIndex,
        tokenizer: PromptTokenizer,
        fallback: PrefixCacheScorer,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_prefix_blocks: int = DEFAULT_MAX_BLOCKS,
        speculative_ttl_s: float = DEFAULT_SPECULATIVE_TTL_S,
        own_fallback: bool = True,
    ) -> None:
        self.name = name
        self.index = index
        self.tokenizer = tokenizer
        self.fallback = fallback
        self.block_size = block_size
        self.max_prefix_blocks = max_prefix_blocks
        self.speculative_ttl_s = speculative_ttl_s
        # A fallback built here is in no profile: this plugin passes it the request hooks so it learns.
        self._own_fallback = own_fallback
        self._cycle_key = f"{TYPE_NAME}:{name}"

    def cycle_match(self, ctx: SchedulingContext) -> PreciseMatch:
        found = ctx.cycle.data.get(self._cycle_key)
        if isinstance(found, PreciseMatch):
            return found
        body = ctx.request.body
        ids = self.tokenizer.tokenize(body) if body else None
        match = PreciseMatch(ids or None)
        ctx.cycle.data[self._cycle_key] = match
        return match

    def _keys(self, match: PreciseMatch, block_size: int, ctx: SchedulingContext) -> list[int]:
        keys = match.keys.get(block_size)
        if keys is None:
            req = ctx.request
            assert match.token_ids is not None
            keys = block_keys(
                match.token_ids, block_size, req.lora_adapter, req.cache_salt, self.max_prefix_blocks
            )
            match.keys[block_size] = keys
        return keys

    def match_ratios(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        """Per candidate: cached leading blocks / prompt blocks (precise where the pod is synced)."""
        match = self.cycle_match(ctx)
        precise: dict[int, list[str]] = {}  # block size -> synced pods
        rest: list[str] = []
        for c in candidates:
            pod = c.endpoint.name
            if match.token_ids is not None and self.index.is_synced(pod):
                precise.setdefault(self.index.block_size(pod) or self.block_size, []).append(pod)
            else:
                rest.append(pod)
        for size, pods in precise.items():
            keys = self._keys(match, size, ctx)
            for pod, n in self.index.match(keys, pods).items():
                match.matched[pod] = n
                match.totals[pod] = len(keys)
                match.ratios[pod] = n / len(keys) if keys else 0.0
        if rest:
            approx = self.fallback.match_ratios(ctx, candidates)
            for pod in rest:
                match.ratios[pod] = approx.get(pod, 0.0)
                match.approximate.add(pod)
        return {c.endpoint.name: match.ratios.get(c.endpoint.name, 0.0) for c in candidates}

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return self.match_ratios(ctx, candidates)

    def predicted_ratio(self, ctx: SchedulingContext, pod: str) -> float | None:
        """The ratio this cycle predicted for `pod` (None if it was not scored), for hit-ratio metrics."""
        return self.cycle_match(ctx).ratios.get(pod)

    def cached_chars(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        """Pod -> prompt characters it is predicted to hold (absent: none): its ratio times the prompt's
        characters, for the `candidates` (scored now) and the pods scored earlier in this cycle."""
        match = self.cycle_match(ctx)
        if candidates:
            self.match_ratios(ctx, candidates)
        chars = len(ctx.request.prompt)
        return {pod: r * chars for pod, r in match.ratios.items() if r > 0.0}

    def matched_key(self, ctx: SchedulingContext, pod: str) -> int | None:
        """The key of the last leading block `pod` holds (None: none, or not scored this cycle); the
        fallback's hash for a pod it scored."""
        match = self.cycle_match(ctx)
        if pod in match.approximate:
            return self.fallback.matched_key(ctx, pod)
        depth = match.matched.get(pod, 0)
        keys = match.keys.get(self.index.block_size(pod) or self.block_size)
        return keys[depth - 1] if depth > 0 and keys else None

    def pre_request(self, ctx: SchedulingContext, endpoint: Endpoint) -> None:
        """Credit the pick's keys to the pod for a short while (its events confirm or let them expire)."""
        pod = endpoint.name
        match = self.cycle_match(ctx)
        if self.speculative_ttl_s > 0 and match.token_ids is not None:
            size = self.index.block_size(pod) or self.block_size
            self.index.speculate(pod, self._keys(match, size, ctx), self.speculative_ttl_s)
        if self._own_fallback:
            self.fallback.pre_request(ctx, endpoint)

    def request_failed(self, ctx: SchedulingContext, report: AttemptReport) -> None:
        """A pod that never answered caches nothing: take back its speculative credit for this prompt."""
        match = self.cycle_match(ctx)
        if not report.responded and report.error != CLIENT_GONE and match.token_ids is not None:
            pod = report.endpoint.name
            self.index.unspeculate(pod, self._keys(match, self.index.block_size(pod) or self.block_size, ctx))
        if self._own_fallback:
            self.fallback.request_failed(ctx, report)

    def response_complete(self, ctx: SchedulingContext, report: AttemptReport) -> None:
        """An own fallback learns characters per token from the answer's usage."""
        if self._own_fallback:
            self.fallback.response_complete(ctx, report)


def _tokenizer(p: PrecisePrefixParams, name: str) -> PromptTokenizer:
    if p.tokenizer == "simulator":
        return SimulatorTokenizer(Tokenizer(p.vocab_size), p.bos_token_id)
    if p.model_path is None:
        raise PluginConfigError(f"plugin {name!r}: parameter 'modelPath': required with tokenizer 'hf-local'")
    # Imported here: jinja2 + tokenizers add ~40 ms to every start that does not use them.
    from epp.tokenization.hf_local import HFLocalTokenizer, TokenizerFilesError

    try:
        return HFLocalTokenizer(p.model_path)
    except (TokenizerFilesError, OSError) as exc:
        raise PluginConfigError(f"plugin {name!r}: parameter 'modelPath': {exc}") from None


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> PrecisePrefixCacheScorer:
    p = parse_params(PrecisePrefixParams, name, params)
    if deps.kv_index is None:
        raise PluginConfigError(
            f"plugin {name!r}: needs the pool's KV-event index (PluginDeps.kv_index), and none was given: "
            "enable KV events for the pool"
        )
    if p.prefix_cache_plugin is not None:
        fallback = resolve_plugin_ref(
            name, "prefixCachePlugin", p.prefix_cache_plugin, deps, (PrefixCacheScorer,), (PREFIX_TYPE,)
        )
        own = False
    else:
        alignment = BlockAlignment("tokens", default_pod_block_tokens=p.block_size)
        fallback, own = PrefixCacheScorer(f"{name}-approximate", alignment=alignment), True
        deps.datastore.subscribe(fallback.on_endpoint_event)
    return PrecisePrefixCacheScorer(
        name,
        deps.kv_index,
        _tokenizer(p, name),
        fallback,
        block_size=p.block_size,
        max_prefix_blocks=p.max_prefix_blocks_to_match,
        speculative_ttl_s=p.speculative_ttl_s if p.speculative else 0.0,
        own_fallback=own,
    )


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
