"""Per-request cost of each way the picker can tokenize a request (docs/precise-prefix.md).

    python -m bench.tokenize_cost --runs 2000 [--words 1500] [--model-dir DIR] [--url http://pod:8000]

Times, per request body (one chat with a long system prompt and one completion): the simulator's tokenizer,
a model's own tokenizer.json + chat template (`hf-local`, default: the tiny Llama's copy in tests/fixtures),
a pod's `POST /tokenize` over loopback HTTP (`vllm-http`, default: a simulated pod started here; `--url` for a
real vLLM), and the block keys + index lookup the precise scorer adds on top. Prints µs per request (median,
p90) and the prompt's token count per tokenizer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.sim.fleet import SimFleet
from epp.kv_events.precise_index import PreciseIndex, block_keys
from epp.kv_events.wire import BlockStored, EventMessage
from epp.tokenization.hf_local import HFLocalTokenizer
from epp.tokenization.simulated import SimulatorTokenizer
from epp.tokenization.vllm_http import VLLMHttpTokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = ROOT / "tests" / "fixtures" / "vllm" / "tiny-llama-tokenizer"
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
]


def bodies(words: int, model: str) -> dict[str, dict[str, Any]]:
    system = " ".join(f"{WORDS[i % len(WORDS)]} {i % 97}" for i in range(words))
    return {
        "chat": {
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "Summarise the policy in two sentences, please."},
            ],
        },
        "completion": {"model": model, "prompt": system},
    }


def _stats(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.9)] * 1e6


def time_sync(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm caches, as a serving picker's are
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return _stats(samples)


async def time_async(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    await fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return _stats(samples)


def report(name: str, kind: str, tokens: int | None, cost: tuple[float, float]) -> None:
    print(f"{name:<22} {kind:<11} tokens={tokens!s:<6} median={cost[0]:9.1f} us  p90={cost[1]:9.1f} us")


def _full_index(ids: list[int], pods: list[str]) -> PreciseIndex:
    """Every pod holding the whole prompt: the longest walk a match can take."""
    index = PreciseIndex()
    keys = len(ids) // 16
    event = BlockStored(tuple(range(1, keys + 1)), None, tuple(ids[: keys * 16]), 16, medium="GPU")
    for pod in pods:
        index.apply(pod, EventMessage("kv", 0, 0.0, (event,), 0))
        index.mark_synced(pod)
    return index


async def main_async(args: argparse.Namespace) -> None:
    sim = SimulatorTokenizer()
    hf = HFLocalTokenizer(args.model_dir)
    pods = [f"pod{i}" for i in range(64)]
    for kind, body in bodies(args.words, "m").items():
        ids = sim.tokenize(body)
        assert ids is not None
        report("simulator", kind, len(ids), time_sync(partial(sim.tokenize, body), args.runs))
        hf_ids = hf.tokenize(body)
        n = None if hf_ids is None else len(hf_ids)
        report("hf-local", kind, n, time_sync(partial(hf.tokenize, body), args.runs))
        keys = block_keys(ids, 16)
        report("block keys (16)", kind, len(ids), time_sync(partial(block_keys, ids, 16), args.runs))
        index = _full_index(ids, pods)
        cost = time_sync(partial(index.match, keys, pods), args.runs)
        report("match, 64 full pods", kind, len(ids), cost)
    if args.url:
        await _http(args, args.url, args.model)
    else:
        async with SimFleet(pods=1, profile="tiny") as fleet:
            await _http(args, fleet.urls[0], fleet.pods[0].model_name)


async def _http(args: argparse.Namespace, url: str, model: str) -> None:
    remote = VLLMHttpTokenizer(url, timeout_s=10.0)
    try:
        for kind, body in bodies(args.words, model).items():
            ids = await remote.tokenize(body)
            assert ids is not None, f"{url}/tokenize gave no ids"
            cost = await time_async(partial(remote.tokenize, body), max(1, args.runs // 4))
            report("vllm-http (loopback)", kind, len(ids), cost)
    finally:
        await remote.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument(
        "--words", type=int, default=1500, help="system prompt length in words (~2 tokens each)"
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--url", default=None, help="a vLLM pod to ask instead of a simulated one")
    parser.add_argument("--model", default="m", help="the model name to send with --url")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
