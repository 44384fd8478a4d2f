"""Benchmark: the semantic tier's added latency (issue targets: miss <= 10 ms p95, hit <= 5 ms p95).

One process, one core's worth of work (onnxruntime and hnswlib on one thread, BLAS on one thread):
- embed: the embedder kinds (numpy fp32 oracle, ONNX fp32, ONNX int8) on one short sentence, and int8 on a
  256-token text; inline vs. on the tier's worker thread; how long the event loop is blocked meanwhile;
- build: the ONNX files from the bundled weights into an empty folder (fp32 graph, int8 quantisation);
- index: `--entries` synthetic unit vectors put straight into ONE partition's index (the figure for search
  time at 100k; real embeddings would take minutes to make), then searches for near-duplicates;
- miss / hit / store: `--real` real questions stored through the full path (embed, Redis HSET+PEXPIRE,
  index) into that same 100k partition, then lookups of unseen questions (miss: embed + search) and of
  the stored ones from a tier with an empty embedding cache (hit: embed + search + guard + Redis HMGET);
- load: `--entries` entries written to Redis, then `load()` rebuilding the index from them.
Redis is Debian's redis-server on a free loopback port, started here (AOF on). `--runs` repeats the timed
loops and prints the median and range of each percentile.

    python -m bench.cache_latency [--entries 100000] [--real 2000] [--requests 1000] [--runs 3] [--json]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads: one BLAS thread, as onnxruntime

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from bench.redis_process import redis_server  # noqa: E402
from epp import event_loop  # noqa: E402
from epp.cache.exact import connect_redis  # noqa: E402
from epp.cache.semantic import records  # noqa: E402
from epp.cache.semantic.embedder import load_embedder  # noqa: E402
from epp.cache.semantic.index import PartitionIndexes  # noqa: E402
from epp.cache.semantic.onnx_build import build_model_files, default_cache_dir  # noqa: E402
from epp.cache.semantic.tier import RedisSemanticTier  # noqa: E402
from epp.cache.types import CacheQuery, StoredAnswer  # noqa: E402

PARTITION = "bench-partition"
SUBJECTS = ["order", "invoice", "parcel", "refund", "account", "subscription", "coupon", "gift card"]
VERBS = ["track", "cancel", "change", "return", "pay for", "split", "transfer", "renew"]
TOPICS = [
    "Kubernetes",
    "PostgreSQL",
    "a sourdough starter",
    "a bicycle chain",
    "tomato plants",
    "Rust lifetimes",
]
Stats = dict[str, float]


def stored_question(i: int) -> str:
    return f"How do I {VERBS[i % 8]} my {SUBJECTS[i // 8 % 8]} number {i} from the {i // 64}th batch?"


def unseen_question(i: int) -> str:
    return f"What is the best way to look after {TOPICS[i % 6]} in week {i} of the year {1900 + i % 97}?"


def query(text: str) -> CacheQuery:
    return CacheQuery("chat", "bench-tenant", "", "bench-model", "k", PARTITION, text, semantic=True)


def answer(i: int) -> StoredAnswer:
    body = {"object": "chat.completion", "choices": [{"message": {"content": "x" * 1000}}], "i": i}
    return StoredAnswer(orjson.dumps(body), "bench-model", time.time(), 3.0)


def stats(samples: list[float]) -> Stats:
    s = sorted(samples)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1e3

    return {
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(s) * 1e3,
    }


async def timed(n: int, op: Callable[[int], Awaitable[object]], warmup: int = 20) -> Stats:
    for i in range(warmup):  # indices past the timed ones: nothing timed was seen before
        await op(n + i)
    out = []
    for i in range(n):
        started = time.perf_counter()
        await op(i)
        out.append(time.perf_counter() - started)
    return stats(out)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def measure_build() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="epp-model-bench-") as folder:
        from epp.cache.semantic.bert import BertWeights, model_dir
        from epp.cache.semantic.onnx_build import build_graph, quantize_int8

        started = time.perf_counter()
        build_graph(BertWeights.load(model_dir()))
        graph_s = time.perf_counter() - started
        started = time.perf_counter()
        files = build_model_files(Path(folder))
        total_s = time.perf_counter() - started
        started = time.perf_counter()
        quantize_int8(files["fp32"], Path(folder) / "again.onnx")
        return {"graph_s": graph_s, "quantize_s": time.perf_counter() - started, "both_files_s": total_s}


async def measure_embed(requests: int, model_dir: Path) -> dict[str, Stats]:
    out: dict[str, Stats] = {}
    embedders = {
        kind: load_embedder(kind, model_dir) for kind in ("minilm-numpy", "minilm-fp32", "minilm-int8")
    }
    for kind, embedder in embedders.items():
        n = requests // 4 if kind == "minilm-numpy" else requests

        async def one(i: int, e: Any = embedder) -> object:
            return e.embed([stored_question(i)])

        out[f"{kind} short"] = await timed(n, one)
    int8 = embedders["minilm-int8"]
    words = " ".join(stored_question(i) for i in range(40)).split()
    long_text = ""
    for tokens in (64, 128, 254):
        text = " ".join(words[: tokens * 2])
        while len(int8._tokenize([text])[0][0]) > tokens + 2:  # type: ignore[attr-defined]
            text = text.rsplit(" ", 1)[0]
        long_text = text

        async def sized(i: int, text: str = text) -> object:
            return int8.embed([text])

        out[f"minilm-int8 {tokens} tokens"] = await timed(max(20, requests // 10), sized)

    async def long(i: int) -> object:
        return int8.embed([long_text])

    executor_tier = RedisSemanticTier(None, int8, lambda a, b: True)  # type: ignore[arg-type]

    async def threaded(i: int) -> object:
        return await executor_tier.embed(stored_question(i))  # distinct texts: no embedding-cache hits

    out["minilm-int8 short, worker thread"] = await timed(requests, threaded)

    async def to_thread(i: int) -> object:
        return await asyncio.to_thread(int8.embed, [stored_question(i)])

    out["minilm-int8 short, asyncio.to_thread"] = await timed(requests, to_thread)
    for label, op in (("inline", long), ("worker thread", lambda i: executor_tier.embed(f"{i} {long_text}"))):
        out[f"loop blocked, 256 tokens {label}"] = await loop_lag(op, 30)
    await executor_tier.close()
    return out


async def loop_lag(op: Callable[[int], Awaitable[object]], n: int) -> Stats:
    """The longest gap between 1 ms ticks of another task while `op` runs: how long the loop was held."""
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last - 0.001)
            last = now

    task = asyncio.create_task(ticker())
    for i in range(n):
        await asyncio.sleep(0.003)  # let the ticker tick between texts
        await op(i)
    done = True
    await task
    return {**stats(gaps), "max_ms": max(gaps) * 1e3}


async def run_once(
    tier: RedisSemanticTier,
    hit_tier: RedisSemanticTier,
    stored: np.ndarray,
    args: argparse.Namespace,
    run: int,
) -> dict[str, Stats]:
    rng = np.random.default_rng(run)
    part = tier.indexes.get(PARTITION)
    assert part is not None
    out: dict[str, Stats] = {}

    async def search(i: int) -> object:
        noise = unit_rows(rng, 1, tier.embedder.dim)[0]
        near = 0.9 * stored[i * 7919 % len(stored)] + 0.43 * noise  # a near-duplicate of a stored vector
        return tier.indexes.search(PARTITION, (near / np.linalg.norm(near)).astype(np.float32), 5)

    out[f"index search, {len(part)} entries"] = await timed(args.requests, search)
    offset = 100_000 * (run + 1)
    misses = 0

    async def miss(i: int) -> object:
        nonlocal misses
        misses += await tier.lookup(query(unseen_question(offset + i))) is None
        return None

    out["semantic miss (embed + search)"] = await timed(args.requests, miss)
    hit_tier._vectors.clear()
    hits = 0

    async def hit(i: int) -> object:
        nonlocal hits
        found = await hit_tier.lookup(query(stored_question(i % args.real)))
        hits += found is not None
        return found

    out["semantic hit (embed + search + Redis)"] = await timed(min(args.requests, args.real - 20), hit)
    print(f"  run {run + 1}: {misses} of {args.requests + 20} misses, {hits} hits", file=sys.stderr)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"loadavg": [os.getloadavg()[0]]}
    model_dir = default_cache_dir()
    if not args.skip_build:
        results["build"] = measure_build()
    results["embed_runs"] = [await measure_embed(args.requests, model_dir) for _ in range(args.runs)]
    results["embed"] = summarise(results["embed_runs"])
    int8 = load_embedder("minilm-int8", model_dir)
    guard = guard_function()
    results["guard"] = getattr(guard, "__module__", "?") + "." + getattr(guard, "__qualname__", "?")
    with redis_server() as server:
        address = server.address
        redis = connect_redis(address, timeout_s=5.0)
        indexes: PartitionIndexes[records.EntryMeta] = PartitionIndexes(
            int8.dim, max_entries=10**7, max_per_partition=10**7
        )
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        vectors = unit_rows(rng, args.entries, int8.dim)
        indexes.add_many(PARTITION, [f"syn{i}" for i in range(args.entries)], vectors, [None] * args.entries)
        results["index build (synthetic, 1 thread) s"] = time.perf_counter() - started
        tier = RedisSemanticTier(redis, int8, guard, indexes=indexes, op_timeout_s=2.0)
        hit_tier = RedisSemanticTier(redis, int8, guard, indexes=indexes, op_timeout_s=2.0)
        stores = [0]

        async def store(i: int) -> object:
            stores[0] += 1
            return await tier.store(query(stored_question(stores[0] - 1)), answer(i))

        results["store (embed + Redis + index)"] = await timed(args.real - 20, store)
        await tier.settle()
        runs = [await run_once(tier, hit_tier, vectors, args, r) for r in range(args.runs)]
        results["runs"] = runs
        results["summary"] = summarise(runs)
        if not args.skip_load:
            results["load"] = await measure_load(redis, int8, guard, args.entries)
        await tier.close()
        await hit_tier.close()
        await redis.aclose()
    results["loadavg"].append(os.getloadavg()[0])
    return results


async def measure_load(redis: Any, embedder: Any, guard: Any, n: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    for start in range(0, n, 1000):
        pipe = redis.pipeline(transaction=False)
        for i, vec in enumerate(unit_rows(rng, min(1000, n - start), embedder.dim)):
            q = query(f"synthetic {start + i}")
            pipe.hset(
                records.redis_key(q.model, f"{start + i:032x}"),
                mapping=records.encode(q, answer(i), vec, embedder.name, time.time() + 3600),
            )
        await pipe.execute()
    out = {"write_s": time.perf_counter() - started}
    tier = RedisSemanticTier(redis, embedder, guard, admin_timeout_s=60)
    started = time.perf_counter()
    loaded = await tier.read_entries()
    out["read_s"] = time.perf_counter() - started
    for threads in (1, 2):
        started = time.perf_counter()
        records.build_indexes(list(loaded), tier.indexes, threads)
        out[f"build_s_{threads}_threads"] = time.perf_counter() - started
    started = time.perf_counter()
    out["entries"] = await tier.load()
    out["load_s"] = time.perf_counter() - started
    return out


def summarise(runs: list[dict[str, Stats]]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """name -> statistic -> (median, min, max) over the runs."""
    return {
        name: {k: (statistics.median(r[name][k] for r in runs), min(r[name][k] for r in runs),
                   max(r[name][k] for r in runs)) for k in runs[0][name]}
        for name in runs[0]
    }  # fmt: skip


def guard_function() -> Callable[[str, str], bool]:
    try:
        from epp.cache.semantic.guards import compatible
    except ImportError:
        return lambda a, b: True
    return compatible


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=100_000, help="synthetic entries in the partition")
    parser.add_argument("--real", type=int, default=2000, help="real questions stored through the full path")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-build", action="store_true", help="do not time the ONNX build")
    parser.add_argument("--skip-load", action="store_true", help="do not time load() of --entries")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = event_loop.run(run(args))
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        return 0
    print(f"semantic tier latency: {args.entries} entries in one partition, {os.cpu_count()} CPUs")
    print(f"guard: {results['guard']}; load average before/after: {results['loadavg']}")
    for key in ("build", "index build (synthetic, 1 thread) s", "load"):
        if key in results:
            print(f"{key}: {results[key]}")
    store = results["store (embed + Redis + index)"]
    print(f"store (embed + Redis + index), 1 run: p50 {store['p50_ms']:.3f} p95 {store['p95_ms']:.3f} ms")
    print(f"{f'median [min-max] of {args.runs} runs':<44} {'p50 ms':>20} {'p95 ms':>20} {'p99 ms':>20}")
    for name, s in [*results["embed"].items(), *results["summary"].items()]:
        cells = [f"{s[k][0]:6.3f} [{s[k][1]:.2f}-{s[k][2]:.2f}]" for k in ("p50_ms", "p95_ms", "p99_ms")]
        print(f"{name:<44} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
