"""`prefix-cache-scorer`: score pods by how much of the prompt's prefix they likely have cached.

Score = leading blocks the pod holds / full blocks of the prompt (see scorers/prefix_index.py). As a
PreRequest hook it teaches the index that the pod the request is sent to now caches the prompt; as a
RequestFailed hook it takes that back when the pod never answered, so after a retry the index names the pod
that served. The block hashes and matches are computed once per request (cached in the cycle state, which a
retry reuses) and shared with `prefix-affinity-filter`; blocks a recent request already hashed are not hashed
again (scorers/block_hash_memo.py).

Blocks are `blockSize` characters (GIE's 64) unless `blockAlign: tokens` aligns them to the pods' KV blocks in
estimated characters (scorers/prefix_alignment.py); as a ResponseComplete hook it then learns characters per
token from the pods' usage.

An LRU sized from the pod's KV capacity (autoSizeLRU) is scaled by how well its predictions held
(`calibrateLRU`, scorers/prefix_capacity.py): the pods' reported cached tokens, per answer or per scrape
window, against the hit fraction predicted for the prompts sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from epp.datastore import Endpoint, EndpointEvent
from epp.scheduling.params import parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.types import CLIENT_GONE, AttemptReport, Candidate, SchedulingContext
from scorers.block_hash_memo import BlockHashMemo
from scorers.chars_per_token import DEFAULT_CHARS_PER_TOKEN
from scorers.prefix_alignment import DEFAULT_POD_BLOCK_TOKENS, BlockAlign, BlockAlignment
from scorers.prefix_capacity import PrefixCapacity
from scorers.prefix_index import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_LRU_CAPACITY,
    DEFAULT_MAX_BLOCKS,
    PrefixIndex,
    capacity_from_metrics,
)

TYPE_NAME = "prefix-cache-scorer"

logger = logging.getLogger(__name__)


class PrefixCacheParams(BaseModel):
    """Parameters as written in config; `hashBlockSize` (GIE's spelling) is accepted for `blockSize`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    block_size: int = Field(
        default=DEFAULT_BLOCK_SIZE,
        gt=0,
        strict=True,
        validation_alias=AliasChoices("blockSize", "hashBlockSize"),
    )
    max_prefix_blocks_to_match: int = Field(
        default=DEFAULT_MAX_BLOCKS, gt=0, strict=True, alias="maxPrefixBlocksToMatch"
    )
    lru_capacity_per_server: int = Field(
        default=DEFAULT_LRU_CAPACITY, gt=0, strict=True, alias="lruCapacityPerServer"
    )
    auto_size_lru: bool = Field(default=True, strict=True, alias="autoSizeLRU")
    calibrate_lru: bool = Field(default=True, strict=True, alias="calibrateLRU")
    # `tokens`: blocks of the pods' KV block size (scraped, or blockSizeTokens) x characters per token.
    block_align: BlockAlign = Field(default="characters", alias="blockAlign")
    block_size_tokens: int | None = Field(default=None, gt=0, strict=True, alias="blockSizeTokens")
    chars_per_token: float = Field(default=DEFAULT_CHARS_PER_TOKEN, ge=0.5, le=20.0, alias="charsPerToken")
    learn_chars_per_token: bool = Field(default=True, strict=True, alias="learnCharsPerToken")

    @model_validator(mode="after")
    def _align_fields(self) -> Self:
        token_only = {"block_size_tokens", "chars_per_token", "learn_chars_per_token"} & self.model_fields_set
        if self.block_align == "characters" and token_only:
            names = ", ".join(sorted(PrefixCacheParams.model_fields[f].alias or f for f in token_only))
            raise ValueError(f"{names}: only with blockAlign 'tokens'")
        if self.block_align == "tokens" and "block_size" in self.model_fields_set:
            raise ValueError(
                "blockSize: not with blockAlign 'tokens' (blocks follow the pods' KV block size; "
                "set blockSizeTokens)"
            )
        return self


@dataclass(slots=True)
class PrefixMatch:
    """One request's block hashes and, per pod holding its first block, how many leading blocks it holds."""

    hashes: list[int]
    matched: dict[str, int]
    block_size: int = DEFAULT_BLOCK_SIZE  # characters per block the hashes were cut at
    cached: dict[str, float] | None = None  # `cached_chars`, once computed

    @property
    def total(self) -> int:
        return len(self.hashes)

    def ratio(self, pod: str) -> float:
        total = len(self.hashes)
        return self.matched.get(pod, 0) / total if total else 0.0


class PrefixCacheScorer:
    """Scorer, PreRequest, RequestFailed and ResponseComplete over a PrefixIndex."""

    def __init__(
        self,
        name: str = TYPE_NAME,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_prefix_blocks: int = DEFAULT_MAX_BLOCKS,
        lru_capacity_per_server: int = DEFAULT_LRU_CAPACITY,
        auto_size_lru: bool = True,
        index: PrefixIndex | None = None,
        alignment: BlockAlignment | None = None,
        calibrate_lru: bool = True,
    ) -> None:
        self.name = name
        self.alignment = alignment if alignment is not None else BlockAlignment("characters", block_size)
        self.max_prefix_blocks = max_prefix_blocks
        self.auto_size_lru = auto_size_lru
        self.index = index if index is not None else PrefixIndex(lru_capacity_per_server)
        self.hash_memo = BlockHashMemo()
        # With autoSizeLRU only: a configured capacity is the operator's, not a KV size to correct.
        self.capacity = PrefixCapacity() if calibrate_lru and auto_size_lru else None
        self._sized_capacity: dict[str, int] = {}  # pod -> LRU capacity from its KV size, before the factor
        self._predicted_key = f"{TYPE_NAME}:{name}:predicted"  # pod -> hit fraction predicted when sent
        self._cycle_key = f"{TYPE_NAME}:{name}"
        self._added_key = f"{TYPE_NAME}:{name}:added"  # pod -> hashes this request added to its LRU
        self._observed_key = f"{TYPE_NAME}:{name}:observed"  # the candidates' KV geometry was checked
        # pod -> the KV geometry its LRU was last sized from (block size, KV blocks), for the block length and
        # characters per token in _sized_shape (a change of those sizes every pod again)
        self._sized_from: dict[str, tuple[int | None, int | None]] = {}
        self._sized_shape: tuple[int, float] | None = None
        # pod -> the candidate last observed: the scheduler reuses a pod's Candidate until its snapshot or
        # in-flight count changes, and an unchanged one has nothing new to observe.
        self._observed: dict[str, Candidate] = {}

    def on_endpoint_event(self, event: EndpointEvent, endpoint: Endpoint) -> None:
        """Datastore listener: forget a pod that restarted (empty cache) or left."""
        if event is EndpointEvent.REMOVED or event is EndpointEvent.RESTARTED:
            self.index.forget(endpoint.name)
            self._sized_from.pop(endpoint.name, None)
            self._sized_capacity.pop(endpoint.name, None)
            self._observed.pop(endpoint.name, None)
            if self.capacity is not None:
                self.capacity.forget(endpoint.name)
        if event is EndpointEvent.REMOVED:
            self.alignment.forget(endpoint.name)

    @property
    def block_size(self) -> int:
        """Characters per block for the next fresh request (a cycle's own is its PrefixMatch.block_size)."""
        return self.alignment.block_chars

    def cycle_match(self, ctx: SchedulingContext) -> PrefixMatch:
        """This request's hashes and matches, computed on first use in the cycle and then reused."""
        found = ctx.cycle.data.get(self._cycle_key)
        if isinstance(found, PrefixMatch):
            return found
        req = ctx.request
        size = self.alignment.block_chars
        hashes = self.hash_memo.hashes(
            req.prompt, req.target_model, size, self.max_prefix_blocks, req.cache_salt
        )
        match = PrefixMatch(hashes, self.index.match(hashes), size)
        ctx.cycle.data[self._cycle_key] = match
        return match

    def match_ratios(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        """Per candidate: matched leading blocks / the request's full blocks (0 without a full block)."""
        # Once per cycle (before the hashes, which the geometry may re-cut): the affinity filter asks first,
        # then the scorer about a subset of those pods.
        data = ctx.cycle.data
        if (self.auto_size_lru or self.alignment.aligned) and self._observed_key not in data:
            self._observe(candidates)
            data[self._observed_key] = True
        match = self.cycle_match(ctx)
        total = match.total
        if total == 0:
            return {c.endpoint.name: 0.0 for c in candidates}
        matched = match.matched
        return {c.endpoint.name: matched.get(c.endpoint.name, 0) / total for c in candidates}

    def matched_blocks(self, ctx: SchedulingContext) -> dict[str, int]:
        """Pod -> leading blocks matched for this cycle's request (pods with no match are absent)."""
        return dict(self.cycle_match(ctx).matched)

    def total_blocks(self, ctx: SchedulingContext) -> int:
        return self.cycle_match(ctx).total

    def cached_chars(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        """Pod -> prompt characters in the leading blocks it is predicted to hold (absent: none); every pod
        of the index, `candidates` aside (the precise scorer's counterpart needs them).

        A pod matching every block of a prompt longer than the hashed window (`maxPrefixBlocksToMatch`)
        is taken to hold the whole prompt: the window caps the hashing cost, and a prompt that agrees with
        a pod's cache for its first 16K characters (a long document, a long conversation) almost always
        goes on agreeing. Counting only the window would make a warm pod look as cold as an idle one.
        """
        match = self.cycle_match(ctx)
        if match.cached is not None:  # (scoring, the load scorer's pre-request and this one's all ask)
            return match.cached
        size = match.block_size
        total = len(match.hashes)
        chars = len(ctx.request.prompt)
        whole = float(chars) if total == self.max_prefix_blocks and chars > total * size else None
        if whole is None:
            match.cached = {pod: float(n * size) for pod, n in match.matched.items()}
        else:
            match.cached = {pod: whole if n == total else float(n * size) for pod, n in match.matched.items()}
        return match.cached

    def matched_key(self, ctx: SchedulingContext, pod: str) -> int | None:
        """The hash of the last leading block `pod` holds (None: it holds none): where its match ends."""
        match = self.cycle_match(ctx)
        depth = match.matched.get(pod, 0)
        return match.hashes[depth - 1] if depth > 0 else None

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        return self.match_ratios(ctx, candidates)

    def pre_request(self, ctx: SchedulingContext, endpoint: Endpoint) -> None:
        """The request goes to `endpoint`, which will now cache the prompt's blocks.

        Remembers, in the cycle state, the blocks the pod did not hold before, for `request_failed`. (The
        pod's LRU was already sized when this cycle scored it.)
        """
        match = self.cycle_match(ctx)
        pod = endpoint.name
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "prefix cache: request %s sent to %s, matched %d of %d blocks",
                ctx.request.request_id,
                pod,
                match.matched.get(pod, 0),
                match.total,
            )
        if not match.hashes:
            return
        capacity = self.capacity
        if capacity is not None:
            chars = len(ctx.request.prompt)
            predicted = self.cached_chars(ctx, ()).get(pod, 0.0)
            capacity.sent(pod, predicted, chars)
            ctx.cycle.data.setdefault(self._predicted_key, {})[pod] = predicted / chars
        added = self.index.insert(pod, match.hashes)
        if added:
            by_pod: dict[str, list[int]] = ctx.cycle.data.setdefault(self._added_key, {})
            by_pod.setdefault(pod, []).extend(added)

    def request_failed(self, ctx: SchedulingContext, report: AttemptReport) -> None:
        """A pod that never answered did not cache the prompt: take back the blocks `pre_request` gave it.

        Blocks it held before this request stay. A pod that answered (even with an error) keeps them: it
        may have computed the prefix; so does one the client left before it answered (it got the request).
        If another request added the same blocks to the pod meanwhile, they go too; the index is
        approximate and the next request through that pod puts them back.
        """
        if report.responded or report.error == CLIENT_GONE:
            return
        by_pod: dict[str, list[int]] | None = ctx.cycle.data.get(self._added_key)
        if not by_pod:
            return
        added = by_pod.pop(report.endpoint.name, None)
        if added:
            self.index.remove(report.endpoint.name, added)

    def response_complete(self, ctx: SchedulingContext, report: AttemptReport) -> None:
        """Token-aligned blocks: learn characters per token from the pod's usage. A pod that reports its
        cached tokens: calibrate its LRU's capacity with them."""
        if self.alignment.aligned:
            self.alignment.observe_usage(len(ctx.request.prompt), report.prompt_tokens)
        capacity, pod = self.capacity, report.endpoint.name
        prompt, cached = report.prompt_tokens, report.cached_prompt_tokens
        if capacity is None or prompt is None or cached is None:
            return
        predicted = ctx.cycle.data.get(self._predicted_key, {}).get(pod)
        if predicted is not None and capacity.answered(pod, predicted, prompt, cached):
            self._resize(pod)

    def _resize(self, pod: str) -> None:
        """The pod's LRU capacity: its KV size's, times its calibration factor."""
        sized = self._sized_capacity.get(pod)
        if sized is not None:
            factor = self.capacity.factor(pod) if self.capacity is not None else 1.0
            self.index.set_capacity(pod, max(1, round(sized * factor)))

    def _observe(self, candidates: Sequence[Candidate]) -> None:
        """When a pod's KV geometry or the block alignment changes: the pod's block size (token alignment)
        and its LRU's capacity (autoSizeLRU), and a new scrape for the calibration. Keyed by value past the
        unchanged candidates: epp's own accounting makes a new snapshot on every send and finish."""
        alignment = self.alignment
        shape = (alignment.block_chars, alignment.chars_per_token)
        if shape != self._sized_shape:  # every pod's LRU was sized for another block length: size them again
            self._sized_shape = shape
            self._sized_from.clear()
            self._observed.clear()
        sized_get = self._sized_from.get
        observed = self._observed
        seen_get = observed.get
        capacity = self.capacity
        for c in candidates:
            pod = c.endpoint.name
            if seen_get(pod) is c:
                continue
            observed[pod] = c
            metrics = c.metrics
            # (The dict lookup first: this loop runs over every candidate of every decision.)
            if (
                capacity is not None
                and capacity.scraped_at.get(pod) != metrics.scraped_at
                and capacity.scraped(pod, metrics)
            ):
                self._resize(pod)
            geometry = sized_get(pod)
            if (
                geometry is not None
                and geometry[0] == metrics.block_size
                and geometry[1] == metrics.num_gpu_blocks
            ):
                continue
            alignment.on_scrape(pod, metrics.block_size)  # may retune the block length
            if self.auto_size_lru:
                sized = capacity_from_metrics(metrics, alignment.block_chars, alignment.chars_per_token)
                if sized is None:
                    self._sized_capacity.pop(pod, None)
                    self.index.set_capacity(pod, None)
                else:
                    self._sized_capacity[pod] = sized
                    self._resize(pod)
            # (If this pod retuned the block length, the next cycle sizes every pod again.)
            self._sized_from[pod] = (metrics.block_size, metrics.num_gpu_blocks)


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> PrefixCacheScorer:
    p = parse_params(PrefixCacheParams, name, params)
    alignment = BlockAlignment(
        p.block_align,
        p.block_size,
        pod_block_tokens=p.block_size_tokens,
        default_pod_block_tokens=DEFAULT_POD_BLOCK_TOKENS,
        chars_per_token=p.chars_per_token,
        learn_chars_per_token=p.learn_chars_per_token,
    )
    plugin = PrefixCacheScorer(
        name,
        max_prefix_blocks=p.max_prefix_blocks_to_match,
        lru_capacity_per_server=p.lru_capacity_per_server,
        auto_size_lru=p.auto_size_lru,
        alignment=alignment,
        calibrate_lru=p.calibrate_lru,
    )
    deps.datastore.subscribe(plugin.on_endpoint_event)
    return plugin


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
