"""Memory and CPU of the precise prefix index (docs/precise-prefix.md).

    python -m bench.precise_index_cost [--blocks 1000000] [--runs 20]

Prints: bytes per cached block (tracemalloc over an index holding `--blocks` blocks in 64-block prompts on
one pod), the cost of ingesting 1,000 events (BlockStored of 8 blocks each, and single-block BlockRemoved, as
vLLM sends evictions), and the precise scorer's decision time at 64 pods (tokenize + keys + match of a chat
with a ~1,500-token shared system prompt every pod holds).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.kv_events.precise_index import PreciseIndex
from epp.kv_events.wire import BlockRemoved, BlockStored, EventMessage
from epp.scheduling.plugins import PluginDeps
from epp.scheduling.types import Candidate, LLMRequest, SchedulingContext
from epp.tokenization.simulated import SimulatorTokenizer
from scorers.precise_prefix_cache_scorer import factory

BLOCK = 16


def _prompt_event(n: int, blocks: int, first_hash: int) -> BlockStored:
    tokens = tuple((n * 7919 + i) % 151_936 for i in range(blocks * BLOCK))
    return BlockStored(tuple(range(first_hash, first_hash + blocks)), None, tokens, BLOCK, medium="GPU")


def memory_per_block(total: int) -> tuple[float, int]:
    per_prompt = 64
    events = [_prompt_event(n, per_prompt, 1 + n * per_prompt) for n in range(total // per_prompt)]
    gc.collect()
    tracemalloc.start()
    index = PreciseIndex(max_blocks_per_pod=total)
    before = tracemalloc.get_traced_memory()[0]
    for n, ev in enumerate(events):
        index.apply("pod", EventMessage("kv", n, 0.0, (ev,), 0))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / index.entries("pod"), index.entries("pod")


def _timed(fn: Callable[[], Any], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def ingestion(runs: int) -> tuple[float, float]:
    """Seconds per 1,000 stored events (8 blocks each) and per 1,000 single-block removals."""
    stored_msgs = [EventMessage("kv", n, 0.0, (_prompt_event(n, 8, 1 + n * 8),), 0) for n in range(1000)]
    removed_msgs = [EventMessage("kv", n, 0.0, (BlockRemoved((1 + n,), "GPU", 0),), 0) for n in range(1000)]

    def store_then_remove() -> tuple[float, float]:
        index = PreciseIndex()
        t0 = time.perf_counter()
        for m in stored_msgs:
            index.apply("pod", m)
        t1 = time.perf_counter()
        for m in removed_msgs:
            index.apply("pod", m)
        return t1 - t0, time.perf_counter() - t1

    results = [store_then_remove() for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def decision(runs: int, pods: int = 64) -> tuple[float, int]:
    tok = SimulatorTokenizer()
    system = " ".join(f"rule {i}: answer politely and cite the policy." for i in range(200))
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
    }
    ids = tok.tokenize(body)
    assert ids is not None
    index = PreciseIndex()
    blocks = len(ids) // BLOCK
    held = BlockStored(tuple(range(1, blocks + 1)), None, tuple(ids[: blocks * BLOCK]), BLOCK, medium="GPU")
    names = [f"pod{i}" for i in range(pods)]
    for name in names:
        index.apply(name, EventMessage("kv", 0, 0.0, (held,), 0))
        index.mark_synced(name)
    scorer = factory("precise", {"speculative": False}, PluginDeps(Datastore(), kv_index=index))
    snap = MetricsSnapshot(waiting=0, running=0, kv_cache_usage=0.0)
    cands = [Candidate(Endpoint(n, "127.0.0.1", 8000 + i), snap, 0) for i, n in enumerate(names)]

    def one() -> None:
        ctx = SchedulingContext(LLMRequest("r", "m", "m", "", body=body))
        scorer.score(ctx, cands)

    one()
    return _timed(one, runs), len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    per_block, entries = memory_per_block(args.blocks)
    print(
        f"memory: {per_block:.0f} B per cached block "
        f"({entries:,} blocks: {per_block * entries / 2**20:.0f} MiB)"
    )
    stored, removed = ingestion(args.runs)
    print(
        f"ingestion: {stored * 1e3:.2f} ms per 1,000 BlockStored (8 blocks each), "
        f"{removed * 1e3:.2f} ms per 1,000 BlockRemoved (1 block each)"
    )
    seconds, tokens = decision(args.runs * 10)
    print(
        f"decision at 64 pods (tokenize + keys + match, {tokens} tokens, all pods hold it): "
        f"{seconds * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
