"""Benchmark: exact-tier lookup latency with Debian's redis-server on loopback (issue target: p95 <= 1 ms).

Starts its own redis-server (a free port, a temporary folder, AOF on as in production), stores `--entries`
answers of `--answer-bytes` each, then times `--requests` sequential lookups of each kind:
- lru-hit: the in-process LRU answers (no Redis round trip);
- redis-hit: no LRU, the entry comes from Redis (GET + PTTL in one pipelined round trip) and is decoded;
- miss: an unknown key, one Redis round trip;
- decide+redis-hit: the request's policy decision and canonical key (`epp.cache.policy.decide`) plus a
  redis-hit, i.e. everything the cache stage adds before it can answer.

    python -m bench.cache_exact_latency [--requests N] [--entries N] [--answer-bytes N] [--json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bench.redis_process import redis_server
from epp import event_loop
from epp.cache.exact import ExactTier, connect_redis
from epp.cache.lru import ByteLRU
from epp.cache.policy import CachePolicy, decide
from epp.cache.types import CacheQuery, StoredAnswer

SYSTEM_PROMPT = "You are a concise assistant for an online store. Answer in two sentences. " * 6
HEADERS = {"authorization": "Bearer sk-bench"}


def request_body(i: int) -> dict[str, Any]:
    question = f"Question {i}: what is the return policy for order #{i * 7919 % 100_000} placed last week?"
    return {
        "model": "bench-model",
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 256,
    }


def answer_for(i: int, answer_bytes: int) -> StoredAnswer:
    content = (f"Answer {i}. " + "x" * answer_bytes)[:answer_bytes]
    body = {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "created": 1,
        "model": "bench-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 300, "total_tokens": 420},
    }
    return StoredAnswer(orjson.dumps(body), "bench-model", time.time(), 3.0, "q")


def query_for(i: int) -> CacheQuery:
    decision = decide("/v1/chat/completions", HEADERS, request_body(i), CachePolicy())
    assert isinstance(decision, CacheQuery)
    return decision


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(min(n, 200)):  # warm-up: connections, caches
        await op(i)
    out = []
    for i in range(n):
        started = time.perf_counter()
        await op(i)
        out.append(time.perf_counter() - started)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3

    return {
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


async def run(requests: int, entries: int, answer_bytes: int) -> dict[str, dict[str, float]]:
    with redis_server() as server:
        address = server.address
        client = connect_redis(address, timeout_s=1.0)
        with_lru = ExactTier(client, ByteLRU(1 << 30), 600, 1.0)
        no_lru = ExactTier(client, None, 600, 1.0)
        queries = [query_for(i) for i in range(entries)]
        for i, query in enumerate(queries):
            await with_lru.store(query, answer_for(i, answer_bytes))
        misses = [query_for(entries + i) for i in range(requests)]

        async def lru_hit(i: int) -> object:
            hit = await with_lru.lookup(queries[i % entries])
            assert hit is not None
            return hit

        async def redis_hit(i: int) -> object:
            hit = await no_lru.lookup(queries[i % entries])
            assert hit is not None
            return hit

        async def miss(i: int) -> object:
            assert await no_lru.lookup(misses[i % requests]) is None
            return None

        async def decide_and_hit(i: int) -> object:
            decision = decide("/v1/chat/completions", HEADERS, request_body(i % entries), CachePolicy())
            assert isinstance(decision, CacheQuery)
            return await no_lru.lookup(decision)

        results = {
            "lru-hit": summary(await timed(requests, lru_hit)),
            "redis-hit": summary(await timed(requests, redis_hit)),
            "miss": summary(await timed(requests, miss)),
            "decide+redis-hit": summary(await timed(requests, decide_and_hit)),
        }
        await client.aclose()
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--answer-bytes", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = event_loop.run(run(args.requests, args.entries, args.answer_bytes))
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        return 0
    loop = "uvloop" if event_loop.loop_factory() is not None else "asyncio"
    n, size = args.requests, args.answer_bytes
    print(f"exact-tier lookup: {n} sequential lookups, {args.entries} entries of {size} B")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {loop} event loop")
    print(f"{'kind':<18} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for kind, s in results.items():
        print(f"{kind:<18} {s['p50_ms']:8.3f} {s['p95_ms']:8.3f} {s['p99_ms']:8.3f} {s['mean_ms']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
