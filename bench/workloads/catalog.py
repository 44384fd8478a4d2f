"""The matrix's named workloads (docs/workloads.md), each sized for the simulator profile it runs on.

Sizes are set for the default profile (qwen2.5-7b-a10: 84,800 KV tokens and ~4,000 prefill tokens/s per
pod, 4 pods) and fitted to another profile by two factors: request rates by its prefill rate, and the sizes
that must overflow one pod's KV cache (cache pressure's users, long-document QA's documents) by its KV size.
A scale sets only the duration (simulated seconds of arrivals), never the shape, so a short CI run has the
same per-request shape as the full one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bench.multi_round_qa import BenchConfig
from bench.sim.profiles import SimProfile
from bench.workloads.generators import bursty_users, document_questions, random_prompts
from bench.workloads.schedule import ScheduledRequest
from bench.workloads.trace import default_trace_path, load_trace, trace_schedule

SCALES: Mapping[str, float] = MappingProxyType({"ci": 20.0, "small": 60.0, "full": 240.0})
_REFERENCE_KV_TOKENS = 84_800  # qwen2.5-7b-a10
_REFERENCE_PREFILL = 4_000.0
# Replaced by the front end's URL at run time.
PLACEHOLDER_URL = "http://127.0.0.1/v1"
LORA_ADAPTERS = tuple(f"adapter-{i}" for i in range(4))
TRACE_START = 3000  # the trace's last thousand rows reuse the most blocks (35% within 300 rows)


@dataclass(frozen=True)
class BuildContext:
    """What a workload is built for: duration (simulated s), seed, per-run salt, model and profile."""

    duration: float
    seed: int
    salt: str
    model: str
    profile: SimProfile

    @property
    def rate_factor(self) -> float:
        return self.profile.prefill_tokens_per_s / _REFERENCE_PREFILL

    @property
    def kv_factor(self) -> float:
        return self.profile.kv_cache_tokens / _REFERENCE_KV_TOKENS


@dataclass(frozen=True)
class Plan:
    """One run's requests: a multi-round QA config (closed loop) or a request list (open loop)."""

    params: dict[str, Any]
    multi_round: BenchConfig | None = None
    schedule: list[ScheduledRequest] | None = None


@dataclass(frozen=True)
class Workload:
    """A named workload: what it tests, what the fleet needs (LoRA adapters), how to build a run."""

    number: int
    name: str
    summary: str
    build: Callable[[BuildContext], Plan]
    lora_modules: tuple[str, ...] = ()
    max_loras: int = 1


def _multi_round(ctx: BuildContext, **shape: Any) -> Plan:
    shape["qps"] = round(shape["qps"] * ctx.rate_factor, 3)
    cfg = BenchConfig(
        **shape,
        time=ctx.duration,
        model=ctx.model,
        base_urls=(PLACEHOLDER_URL,),
        seed=ctx.seed,
        salt=ctx.salt,
        log_interval=1e9,
        show_progress=False,
    )
    params = {k: v for k, v in shape.items() if k != "lora_adapters"}
    if cfg.lora_adapters:
        params["lora_adapters"] = list(cfg.lora_adapters)
    return Plan({**params, "time": ctx.duration}, multi_round=cfg)


def _count(rate: float, duration: float) -> int:
    return max(2, math.ceil(rate * duration))


def multi_round_qa(ctx: BuildContext) -> Plan:
    # The headline (docs/benchmarks.md): 45 users' conversations outgrow one pod, 3.5 QPS near saturation.
    return _multi_round(
        ctx,
        num_users=45,
        num_rounds=20,
        qps=3.5,
        shared_system_prompt=1000,
        user_history_prompt=3000,
        answer_len=100,
    )


def shared_system_prompt(ctx: BuildContext) -> Plan:
    # 2,500 shared tokens against ~500-1,500 per user: the longest match is always "any pod with the
    # system prompt", and the users nearly fit one pod's KV, so a router that follows the match piles everyone
    # onto one pod.
    return _multi_round(
        ctx,
        num_users=65,
        num_rounds=10,
        qps=8.0,
        shared_system_prompt=2500,
        user_history_prompt=500,
        answer_len=100,
    )


def cache_pressure(ctx: BuildContext) -> Plan:
    # Each user ends near 3,000 + 8 x ~125 = 4,000 tokens; users x that = 4x one pod's KV cache.
    per_user = 3000 + 8 * 125
    users = (
        max(8, round(4 * _REFERENCE_KV_TOKENS * ctx.kv_factor / per_user)) | 1
    )  # odd: no pod count divides it
    return _multi_round(
        ctx,
        num_users=users,
        num_rounds=8,
        qps=3.0,
        shared_system_prompt=0,
        user_history_prompt=3000,
        answer_len=100,
    )


def long_document_qa(ctx: BuildContext) -> Plan:
    # 8 x 12,500 tokens = 100K: more than one pod holds (84,800), a quarter of it fits each pod.
    documents = max(2, round(8 * ctx.kv_factor))
    rate = 1.0 * ctx.rate_factor
    per_doc = max(1, math.ceil(_count(rate, ctx.duration) / documents))
    requests = document_questions(documents, per_doc, rate, 50_000, 60, ctx.seed, ctx.salt)
    params = {"documents": documents, "document_chars": 50_000, "questions_per_document": per_doc}
    return Plan({**params, "rate": rate, "answer_len": 60}, schedule=requests)


def no_sharing(ctx: BuildContext) -> Plan:
    rate = 5.0 * ctx.rate_factor
    count = _count(rate, ctx.duration)
    requests = random_prompts(count, rate, 1000, 100, ctx.seed, ctx.salt)
    return Plan(
        {"requests": count, "rate": rate, "prompt_tokens": 1000, "answer_len": 100}, schedule=requests
    )


def trace_replay(ctx: BuildContext) -> Plan:
    # 64 tokens per trace block (1/8 of 512): the median prompt of 11.6K tokens becomes 1.45K; at most 128
    # blocks (8K tokens) per prompt, which fits max_model_len 32,768.
    rate = 4.0 * ctx.rate_factor
    rows = load_trace(default_trace_path())
    count = min(_count(rate, ctx.duration), len(rows) - TRACE_START)
    window = rows[TRACE_START : TRACE_START + count]
    requests = trace_schedule(window, 64, rate, 128, 200, ctx.seed, ctx.salt)
    params = {"trace": default_trace_path().name, "rows": f"{TRACE_START}-{TRACE_START + count - 1}"}
    return Plan({**params, "block_tokens": 64, "max_blocks": 128, "rate": rate}, schedule=requests)


def lora_mix(ctx: BuildContext) -> Plan:
    # 4 adapters, at most 2 per batch on a pod: a batch that mixes them waits or swaps adapters.
    return _multi_round(
        ctx,
        num_users=37,
        num_rounds=10,
        qps=3.0,
        shared_system_prompt=500,
        user_history_prompt=1500,
        answer_len=100,
        lora_adapters=LORA_ADAPTERS,
    )


def bursty(ctx: BuildContext) -> Plan:
    # 4 s bursts at 3x the mean rate, then 8 s of silence: the mean equals a steady 3 QPS.
    rate = 3.0 * ctx.rate_factor
    count = _count(rate, ctx.duration)
    requests = bursty_users(count, 48, rate, 4.0, 8.0, 1000, 2000, 100, ctx.seed, ctx.salt)
    params = {"requests": count, "users": 48, "mean_rate": rate, "on_s": 4.0, "off_s": 8.0}
    return Plan({**params, "system_tokens": 1000, "context_tokens": 2000}, schedule=requests)


WORKLOADS: Mapping[str, Workload] = MappingProxyType(
    {
        w.name: w
        for w in (
            Workload(1, "multi-round-qa", "multi-round QA near round-robin's saturation", multi_round_qa),
            Workload(
                2,
                "shared-system-prompt",
                "2,500-token system prompt shared by all users",
                shared_system_prompt,
            ),
            Workload(3, "cache-pressure", "working set 4x one pod's KV cache", cache_pressure),
            Workload(
                4, "long-document-qa", "8 documents of 50K characters, many questions each", long_document_qa
            ),
            Workload(5, "no-sharing", "random prompts, nothing to reuse", no_sharing),
            Workload(6, "trace-replay", "Mooncake trace, 512-token block ids mapped to text", trace_replay),
            Workload(7, "lora-mix", "4 LoRA adapters over max_loras 2 pods", lora_mix, LORA_ADAPTERS, 2),
            Workload(8, "bursty", "on/off bursts at a 3 QPS mean", bursty),
        )
    }
)


def get_workload(name: str) -> Workload:
    """The workload called `name` (or its number); ValueError listing the known ones otherwise."""
    for workload in WORKLOADS.values():
        if name in (workload.name, str(workload.number)):
            return workload
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


def parse_workloads(text: str) -> list[Workload]:
    """`all` or comma-separated names/numbers -> workloads in matrix order; ValueError for a bad one."""
    if text.strip().lower() == "all":
        return list(WORKLOADS.values())
    chosen = [get_workload(part.strip()) for part in text.split(",") if part.strip()]
    if not chosen:
        raise ValueError("--workloads needs at least one name")
    return sorted(set(chosen), key=lambda w: w.number)
