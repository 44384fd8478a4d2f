"""Precise prefix keys against real vLLM: the model's local tokenizer, vLLM's /tokenize, its KV events."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import zmq.asyncio

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.kv_events.precise_index import PreciseIndex, block_keys
from epp.kv_events.subscriber import KVEventSubscriber
from epp.scheduling.plugins import PluginDeps
from epp.scheduling.types import Candidate, LLMRequest, SchedulingContext
from epp.tokenization.hf_local import HFLocalTokenizer
from epp.tokenization.vllm_http import VLLMHttpTokenizer
from scorers.precise_prefix_cache_scorer import factory
from tests.vllm.conftest import Pods
from tests.vllm.pods import ADAPTER, BLOCK_SIZE, BUILD, MODEL

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL_DIR = BUILD / "model" / "base"
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "fox",
    "golf",
    "hotel",
    "india",
    "kilo",
    "lima",
    "mike",
]


def chat(seed: int, question: str, **extra: Any) -> dict[str, Any]:
    rng = random.Random(seed)
    system = " ".join(f"{rng.choice(WORDS)} {rng.randrange(1000)}" for _ in range(200))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {"model": MODEL, "messages": messages, "max_tokens": 1, **extra}


@dataclass
class Followed:
    """An index fed by pod 0's live events; `applied` is set after each message."""

    index: PreciseIndex
    applied: asyncio.Event = field(default_factory=asyncio.Event)

    async def until_held(self, keys: list[int]) -> None:
        async with asyncio.timeout(10):
            while self.index.match(keys, ["pod0"])["pod0"] < len(keys):
                self.applied.clear()
                await self.applied.wait()


@pytest.fixture
async def followed(pods: Pods) -> AsyncIterator[Followed]:
    """Pod 0 marked synced from the start: only blocks seen stored since are credited."""
    ctx = zmq.asyncio.Context()
    sub = KVEventSubscriber(ctx, pods.kv_endpoints[0], topic="kv")
    out = Followed(PreciseIndex())
    out.index.reset("pod0", synced=True)

    async def feed() -> None:
        async for message in sub.messages():
            out.index.apply("pod0", message)
            out.applied.set()

    task = asyncio.create_task(feed())
    try:
        yield out
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sub.close()
        ctx.term()


async def _send(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    answer = await client.post(f"{url}/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text


async def test_the_local_tokenizer_gives_vllms_own_ids(pods: Pods) -> None:
    local = HFLocalTokenizer(MODEL_DIR)
    remote = VLLMHttpTokenizer(pods.urls[0], timeout_s=30.0)
    try:
        for body in (
            chat(1, "What is the first word?"),
            {"model": MODEL, "prompt": "The quick brown fox jumps over 13 lazy dogs."},
            {**chat(2, "Again?"), "model": ADAPTER},
        ):
            ids = await remote.tokenize(body)
            assert ids is not None and ids == local.tokenize(body)
    finally:
        await remote.aclose()


async def test_keys_from_the_request_match_the_blocks_vllm_reports(pods: Pods, followed: Followed) -> None:
    tok = HFLocalTokenizer(MODEL_DIR)
    index = followed.index
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        # A SUB socket misses what was published before it joined: prime until the index hears something.
        for attempt in range(20):
            await _send(client, pods.urls[0], chat(1000 + attempt, "prime"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await followed.applied.wait()
            if index.entries("pod0"):
                break
        else:
            raise AssertionError(f"no KV event from {pods.kv_endpoints[0]}")
        seed = random.randrange(1 << 30)
        plain = chat(seed, "Which words repeat?")
        salted = {**chat(seed, "Which words repeat?"), "model": ADAPTER, "cache_salt": "tenant-1"}
        for body in (plain, salted):
            await _send(client, pods.urls[0], body)
    ids = tok.tokenize(plain)
    assert ids is not None and len(ids) >= 2 * BLOCK_SIZE
    assert index.block_size("pod0") == BLOCK_SIZE
    await followed.until_held(block_keys(ids, BLOCK_SIZE))
    # The adapter and the salt reach the keys as vLLM reports them (lora_name, the first block's extra_keys).
    await followed.until_held(block_keys(ids, BLOCK_SIZE, ADAPTER, "tenant-1"))
    assert index.match(block_keys(ids, BLOCK_SIZE, ADAPTER, "tenant-2"), ["pod0"]) == {"pod0": 0}
    assert index.match(block_keys(ids, BLOCK_SIZE, None, "tenant-1"), ["pod0"]) == {"pod0": 0}
    # And the scorer, tokenizing the body itself, sees the pod holding every full block.
    scorer = factory(
        "precise",
        {"tokenizer": "hf-local", "modelPath": str(MODEL_DIR), "speculative": False},
        PluginDeps(Datastore(), kv_index=index),
    )
    snap = MetricsSnapshot(waiting=0, running=0, kv_cache_usage=0.0)
    cands = [Candidate(Endpoint(n, "127.0.0.1", 8000 + i), snap, 0) for i, n in enumerate(("pod0", "pod1"))]
    ctx = SchedulingContext(LLMRequest("r", MODEL, MODEL, "", body=plain))
    assert scorer.score(ctx, cands) == {"pod0": 1.0, "pod1": 0.0}
    assert scorer.cycle_match(ctx).approximate == {"pod1"}  # never seen: the approximate fallback
