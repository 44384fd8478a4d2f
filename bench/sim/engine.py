"""Deterministic core of a simulated vLLM engine: V1-style continuous batching over a paged,
prefix-cached KV cache.

Pure and synchronous: the caller passes simulated times in. One engine step is `schedule(now)` (decides
the batch, allocates KV, returns the step with its duration) then `complete(step)` (applies the work at
`step.end`, emits tokens, frees finished requests). `run_step(now)` does both for tests.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

from bench.sim.kv_cache import BlockPool, CacheEvent, block_hashes, extend_block_hashes, hash_extra_key
from bench.sim.profiles import SimProfile


@dataclass(eq=False)
class SimRequest:
    """One generation request and its progress through the engine."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    arrival: float
    lora: str | None = None
    stop_after: int | None = None  # the "model" emits EOS after this many tokens (finish_reason "stop")
    cache_salt: str | None = None  # vLLM's: keys the first block's hash, so no cache is shared across salts
    # Token id of the i-th generated token (the pod passes its tokenizer's id of the text it streams), so
    # decode blocks hash like the next round's prompt. None: a deterministic id per request and index.
    output_token: Callable[[int], int] | None = None
    output_ids: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_output: int = 0
    num_cached_tokens: int = 0
    num_registered: int = 0
    num_preemptions: int = 0
    blocks: list[int] = field(default_factory=list)
    first_scheduled: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    last_itl: float = 0.0  # simulated seconds between the last two tokens
    finished_at: float | None = None
    finish_reason: str | None = None
    aborted: bool = False

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def target(self) -> int:
        """Tokens whose KV must be computed before the next token can be sampled."""
        return len(self.prompt_ids) + self.num_output


@dataclass
class ScheduledStep:
    """One forward pass: which requests compute how many tokens, and how long it takes (simulated seconds)."""

    start: float
    duration: float
    work: list[tuple[SimRequest, int]]
    prefill_tokens: int
    num_decode: int
    lora_loads: int

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class TokenOutput:
    """A token produced for `request` at the end of a step; `finished` when it was the last one."""

    request: SimRequest
    first: bool
    finished: bool


@dataclass
class EngineStats:
    """Cumulative counters, as vLLM's /metrics counts them (prefix cache counters are in tokens)."""

    prefix_queries: int = 0
    prefix_hits: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    aborted: int = 0  # client aborts: only in /sim/state (vLLM's request_success_total leaves them out)


class EngineCore:
    """Scheduler + KV cache of one simulated vLLM instance."""

    def __init__(
        self,
        profile: SimProfile,
        max_loras: int = 1,
        record_kv_events: bool = False,
        kv_event_sink: Callable[[list[CacheEvent]], object] | None = None,
    ) -> None:
        self.profile = profile
        self.max_loras = max_loras
        # KV events (vLLM's --kv-events-config): a sink gets each step's events; without one they wait in
        # the pool for drain_events().
        self.kv_event_sink = kv_event_sink
        self.pool = BlockPool(
            profile.num_gpu_blocks, profile.block_size, record_kv_events or bool(kv_event_sink)
        )
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.stats = EngineStats()
        self._loaded_loras: OrderedDict[str, None] = OrderedDict()

    # -- requests -------------------------------------------------------------------------------------------
    def add_request(self, req: SimRequest) -> None:
        """Queue a request; its block hashes are computed once, here."""
        if not req.hashes:
            extra = hash_extra_key(req.lora, req.cache_salt)
            req.hashes = block_hashes(req.prompt_ids, self.profile.block_size, extra)
        self.waiting.append(req)

    def abort(self, req: SimRequest) -> None:
        """Drop a request (client went away), freeing its KV.

        Not counted in `finished` (vllm:request_success_total): vLLM 0.32 counts only requests the engine
        finishes itself, and a client abort never reaches that count.
        """
        if req.finish_reason is not None:
            return
        req.aborted = True
        req.finish_reason = "abort"
        self.stats.aborted += 1
        if req in self.running:
            self.running.remove(req)
            self.pool.release(req.blocks)
            req.blocks = []
        elif req in self.waiting:
            self.waiting.remove(req)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def running_loras(self) -> list[str]:
        return sorted({r.lora for r in self.running if r.lora})

    def waiting_loras(self) -> list[str]:
        return sorted({r.lora for r in self.waiting if r.lora})

    # -- scheduling -----------------------------------------------------------------------------------------
    def _blocks_needed(self, req: SimRequest, num_new: int) -> int:
        size = self.profile.block_size
        return -(-(req.num_computed + num_new) // size) - len(req.blocks)

    def _preempt(self, victim: SimRequest) -> None:
        """Recompute-style preemption: free the KV (it stays cached) and requeue at the front."""
        self.pool.release(victim.blocks)
        victim.blocks = []
        victim.num_computed = 0
        victim.num_registered = 0
        victim.num_preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(victim)

    def _schedule_running(self, budget: int, work: list[tuple[SimRequest, int]]) -> tuple[int, bool]:
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.target - req.num_computed, budget)
            while self._blocks_needed(req, num_new) > self.pool.num_free:
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                req.blocks += self.pool.allocate(self._blocks_needed(req, num_new))
                work.append((req, num_new))
                budget -= num_new
                i += 1
                continue
            break
        return budget, preempted

    def _lora_blocked(self, req: SimRequest, active: set[str]) -> bool:
        return req.lora is not None and req.lora not in active and len(active) >= self.max_loras

    def _schedule_waiting(self, budget: int, now: float, work: list[tuple[SimRequest, int]]) -> None:
        size = self.profile.block_size
        active = {r.lora for r in self.running if r.lora}
        skipped: list[SimRequest] = []
        while self.waiting and budget > 0 and len(self.running) < self.profile.max_num_seqs:
            req = self.waiting[0]
            if self._lora_blocked(req, active):
                skipped.append(self.waiting.popleft())
                continue
            hits = self.pool.lookup(req.hashes, (req.target - 1) // size)
            cached = len(hits) * size
            num_new = min(req.target - cached, budget)
            need = -(-(cached + num_new) // size) - len(hits)
            if self.pool.free_after_touch(hits) < need:
                break
            self.waiting.popleft()
            self.pool.touch(hits)
            req.blocks = hits + self.pool.allocate(need)
            req.num_computed = cached
            req.num_registered = len(hits)
            if req.first_scheduled is None:
                req.first_scheduled = now
                req.num_cached_tokens = cached
            self.stats.prefix_queries += req.target
            self.stats.prefix_hits += cached
            self.running.append(req)
            if req.lora:
                active.add(req.lora)
            work.append((req, num_new))
            budget -= num_new
        self.waiting.extendleft(reversed(skipped))

    def _load_loras(self, work: list[tuple[SimRequest, int]]) -> int:
        """Make the batch's adapters resident (LRU over max_loras GPU slots); returns how many were loaded."""
        loads = 0
        used = {req.lora for req, _ in work if req.lora}
        for name in sorted(used):
            if name in self._loaded_loras:
                self._loaded_loras.move_to_end(name)
                continue
            if len(self._loaded_loras) >= self.max_loras:
                evictable = next((n for n in self._loaded_loras if n not in used), None)
                if evictable is not None:
                    del self._loaded_loras[evictable]
            self._loaded_loras[name] = None
            loads += 1
        return loads

    def schedule(self, now: float) -> ScheduledStep | None:
        """Pick the next batch at simulated time `now`; None when there is nothing to run."""
        work: list[tuple[SimRequest, int]] = []
        budget, preempted = self._schedule_running(self.profile.max_num_batched_tokens, work)
        if not preempted:
            self._schedule_waiting(budget, now, work)
        if not work:
            return None
        p = self.profile
        prefill = 0
        decode = 0
        context = 0
        for req, num_new in work:
            if req.num_computed >= req.num_prompt and num_new == 1:
                decode += 1
                context += req.num_computed
            else:
                prefill += num_new
        loads = self._load_loras(work)
        duration = (
            p.step_base_s
            + p.decode_per_seq_s * decode
            + prefill / p.prefill_tokens_per_s
            + context * p.kv_bytes_per_token / p.mem_bandwidth_bytes_per_s
            + p.lora_load_s * loads
        )
        return ScheduledStep(now, duration, work, prefill, decode, loads)

    # -- completion -----------------------------------------------------------------------------------------
    def complete(self, step: ScheduledStep) -> list[TokenOutput]:
        """Apply a scheduled step at `step.end`: advance requests, cache full prompt blocks, emit tokens."""
        outputs: list[TokenOutput] = []
        size = self.profile.block_size
        self.stats.steps += 1
        for req, num_new in step.work:
            if req.aborted or req.finish_reason is not None or not req.blocks:
                continue  # aborted or preempted while the step ran
            req.num_computed += num_new
            full = req.num_computed // size
            if full > len(req.hashes):  # decode blocks: vLLM caches generated tokens once a block is full
                extra = hash_extra_key(req.lora, req.cache_salt)
                extend_block_hashes(req.hashes, self._tokens(req, full * size), size, extra)
            for i in range(req.num_registered, full):
                parent = req.hashes[i - 1] if i else None
                tokens = tuple(self._tokens(req, (i + 1) * size)[i * size :]) if self.pool.records else ()
                salt = req.cache_salt if i == 0 else None
                self.pool.cache_block(req.blocks[i], req.hashes[i], parent, tokens, req.lora, salt)
            req.num_registered = max(req.num_registered, full)
            if req.num_computed < req.target:
                continue  # a chunk of a longer prefill
            first = req.num_output == 0
            req.output_ids.append(
                req.output_token(req.num_output) if req.output_token else _default_token(req, req.num_output)
            )
            req.num_output += 1
            self.stats.generation_tokens += 1
            if first:
                req.first_token_at = step.end
                self.stats.prompt_tokens += req.num_prompt
            elif req.last_token_at is not None:
                req.last_itl = step.end - req.last_token_at
            req.last_token_at = step.end
            reason = self._finish_reason(req)
            if reason is not None:
                self._finish(req, reason, step.end)
            outputs.append(TokenOutput(req, first, reason is not None))
        self._flush_kv_events()
        return outputs

    def reset_prefix_cache(self) -> bool:
        """vLLM's POST /reset_prefix_cache: False (nothing done) while requests hold blocks."""
        done = self.pool.reset_prefix_cache()
        self._flush_kv_events()
        return done

    def _flush_kv_events(self) -> None:
        if self.kv_event_sink is not None and (events := self.pool.drain_events()):
            self.kv_event_sink(events)

    @staticmethod
    def _tokens(req: SimRequest, count: int) -> list[int]:
        """The first `count` tokens of prompt + output."""
        if count <= req.num_prompt:
            return req.prompt_ids[:count]
        return req.prompt_ids + req.output_ids[: count - req.num_prompt]

    def _finish_reason(self, req: SimRequest) -> str | None:
        if req.stop_after is not None and req.num_output >= req.stop_after:
            return "stop"
        if req.num_output >= req.max_tokens or req.target >= self.profile.max_model_len:
            return "length"
        return None

    def _finish(self, req: SimRequest, reason: str, now: float) -> None:
        req.finish_reason = reason
        req.finished_at = now
        self.running.remove(req)
        self.pool.release(req.blocks)
        req.blocks = []
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1

    def run_step(self, now: float) -> tuple[ScheduledStep | None, list[TokenOutput]]:
        """Schedule and complete one step at once (tests and offline use)."""
        step = self.schedule(now)
        return step, (self.complete(step) if step is not None else [])


def _default_token(req: SimRequest, index: int) -> int:
    return xxhash.xxh64_intdigest(index.to_bytes(8, "little"), seed=hash_seed(req.request_id)) % 151_936


def hash_seed(text: str) -> int:
    """A stable 64-bit seed from a string (Python's hash() is salted per process)."""
    return xxhash.xxh64_intdigest(text.encode("utf-8"))
