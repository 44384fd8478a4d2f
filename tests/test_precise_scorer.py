"""The precise prefix scorer: scores from the pods' KV events, its fallback, speculation, replicas, config."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import httpx
import pytest
import zmq.asyncio

from bench.sim.engine import EngineCore, SimRequest
from bench.sim.fleet import SimFleet
from bench.sim.kv_cache import block_hashes
from bench.sim.kv_events import KVEventsConfig, encode_message, wire_events
from bench.sim.profiles import get_profile
from epp.config.picker_config import EndpointPickerConfig
from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.kv_events.precise_index import PreciseIndex
from epp.kv_events.sources import parse_sources
from epp.kv_events.subscriber import KVEventSubscriber
from epp.kv_events.wire import decode_message
from epp.scheduling.builder import build_scheduler
from epp.scheduling.plugins import PluginConfigError, PluginDeps, PreRequest, RequestFailed, Scorer
from epp.scheduling.types import AttemptReport, Candidate, LLMRequest, SchedulingContext
from epp.tokenization.simulated import SimulatorTokenizer
from scorers.builtin import default_registry
from scorers.precise_prefix_cache_scorer import PrecisePrefixCacheScorer, factory
from scorers.prefix_cache_scorer import PrefixCacheScorer

PROFILE = dataclasses.replace(get_profile("tiny"), num_gpu_blocks=256)
BLOCK = PROFILE.block_size
MODEL = PROFILE.model
TOKENIZER = SimulatorTokenizer(bos_token_id=PROFILE.bos_token_id)


class FedPod:
    """A simulated engine whose KV events reach the index through the real encoder and decoder."""

    def __init__(self, name: str, index: PreciseIndex, *more: PreciseIndex) -> None:
        self.name = name
        self.engine = EngineCore(PROFILE, max_loras=1, record_kv_events=True)
        self.indexes = (index, *more)
        self.seq = 0
        self.now = 0.0
        for ix in self.indexes:
            ix.reset(name, synced=True)

    def serve(self, body: dict[str, Any], lora: str | None = None, salt: str | None = None) -> None:
        ids = TOKENIZER.tokenize(body)
        assert ids is not None
        self.engine.add_request(
            SimRequest(f"{self.name}-{self.seq}", ids, 1, self.now, lora=lora, cache_salt=salt)
        )
        while self.engine.has_work():
            step, _ = self.engine.run_step(self.now)
            self.now = step.end if step is not None else self.now + 0.01
            self.publish()

    def reset_cache(self) -> None:
        assert self.engine.pool.reset_prefix_cache()
        self.publish()

    def publish(self) -> None:
        wire = wire_events(self.engine.pool.drain_events(), BLOCK, {"ad": 1})
        if wire:
            message = decode_message(encode_message("kv", self.seq, self.now, wire))
            self.seq += 1
            for ix in self.indexes:
                ix.apply(self.name, message)


def cand(name: str) -> Candidate:
    snap = MetricsSnapshot(waiting=0, running=0, kv_cache_usage=0.0, scraped_at=1.0)
    return Candidate(Endpoint(name, "127.0.0.1", 8000), snap, 0)


def chat(topic: str, question: str) -> dict[str, Any]:
    system = f"You are the {topic} assistant. " + " ".join(f"{topic} fact {i} is true." for i in range(60))
    return {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
    }


def request(body: dict[str, Any], lora: str | None = None, salt: str | None = None) -> SchedulingContext:
    prompt = " ".join(str(m["content"]) for m in body.get("messages", [])) or str(body.get("prompt"))
    return SchedulingContext(
        LLMRequest("r", MODEL, lora or MODEL, prompt, body=body, lora_adapter=lora, cache_salt=salt)
    )


def build(index: PreciseIndex | None, **params: Any) -> PrecisePrefixCacheScorer:
    deps = PluginDeps(Datastore(), kv_index=index)
    return factory("precise", {"speculative": False, **params}, deps)


def test_registered_and_implements_its_roles():
    index = PreciseIndex()
    plugin = default_registry().build(
        "precise-prefix-cache-scorer", "pp", {}, PluginDeps(Datastore(), kv_index=index)
    )
    assert isinstance(plugin, PrecisePrefixCacheScorer)
    assert isinstance(plugin, Scorer) and isinstance(plugin, PreRequest) and isinstance(plugin, RequestFailed)


def test_without_an_index_the_factory_names_what_is_missing():
    with pytest.raises(PluginConfigError, match="kv_index"):
        build(None)


def test_bad_parameters_are_named():
    with pytest.raises(PluginConfigError, match="modelPath"):
        build(PreciseIndex(), tokenizer="hf-local")
    with pytest.raises(PluginConfigError, match=r"modelPath.*tokenizer\.json"):
        build(PreciseIndex(), tokenizer="hf-local", modelPath="/nonexistent/model")
    with pytest.raises(PluginConfigError, match="prefixCachePlugin"):
        build(PreciseIndex(), prefixCachePlugin="nope")
    with pytest.raises(PluginConfigError, match="tokenizer"):
        build(PreciseIndex(), tokenizer="tiktoken")


def test_picks_the_pod_the_events_name_where_the_approximate_index_is_fooled():
    index = PreciseIndex()
    a, b = FedPod("a", index), FedPod("b", index)
    plugin = build(index)
    body = chat("billing", "How do I pay?")
    first = request(body)
    plugin.score(first, [cand("a"), cand("b")])
    plugin.pre_request(first, Endpoint("a", "127.0.0.1", 8000))  # the picker sent it to a...
    a.serve(body)
    a.reset_cache()  # ...whose cache was then reset, and the same prompt reached b past the picker
    b.serve(body)
    again = request(body)
    scores = plugin.score(again, [cand("a"), cand("b")])
    assert scores["b"] > 0.9 and scores["a"] == 0.0
    approx = plugin.fallback.score(request(body), [cand("a"), cand("b")])
    assert approx["a"] > 0.9 and approx["b"] == 0.0  # what the approximate index alone would have said
    # The ratio is what the pod really holds: every full block of the prompt.
    ids = TOKENIZER.tokenize(body)
    assert ids is not None
    held = b.engine.pool.lookup(block_hashes(ids, BLOCK), 10**6)
    assert len(held) == len(ids) // BLOCK == plugin.cycle_match(again).matched["b"]


def test_prompts_that_differ_inside_a_block_match_only_their_shared_blocks():
    index = PreciseIndex()
    a, b = FedPod("a", index), FedPod("b", index)
    plugin = build(index)
    base = chat("search", "Find the cheapest flight to Lisbon next week.")
    a.serve(base)
    b.serve(chat("search", "Find the cheapest train to Lisbon next week."))
    scores = plugin.score(request(base), [cand("a"), cand("b")])
    assert scores["a"] == 1.0 and 0.5 < scores["b"] < 1.0  # b shares the system prompt's blocks only


def test_unsynced_pods_and_untokenizable_requests_fall_back_to_the_approximate_index():
    index = PreciseIndex()
    a = FedPod("a", index)
    plugin = build(index)
    body = chat("hr", "How many days off do I have?")
    a.serve(body)
    ctx = request(body)
    plugin.score(ctx, [cand("a")])
    plugin.pre_request(ctx, Endpoint("a", "127.0.0.1", 8000))  # the fallback learns a too
    index.reset("a", synced=False)  # a gap: a's view is unknown
    scores = plugin.score(request(body), [cand("a"), cand("never-seen")])
    assert scores["a"] > 0.9 and scores["never-seen"] == 0.0
    match = plugin.cycle_match(ctx)
    assert "a" not in match.approximate
    unknown = request(body)
    plugin.score(unknown, [cand("a")])
    assert plugin.cycle_match(unknown).approximate == {"a"}
    index.mark_synced("a")  # synced again, but the reset emptied it: precise says 0
    assert plugin.score(request(body), [cand("a")]) == {"a": 0.0}
    batch = request({"model": MODEL, "prompt": ["one prompt", "another prompt"]})
    plugin.score(batch, [cand("a")])
    assert plugin.cycle_match(batch).token_ids is None and plugin.cycle_match(batch).approximate == {"a"}


def test_lora_and_cache_salt_keep_blocks_apart():
    index = PreciseIndex()
    a = FedPod("a", index)
    plugin = build(index)
    body = chat("legal", "Is this contract valid?")
    a.serve(body, lora="ad", salt="tenant-1")
    assert plugin.score(request(body, lora="ad", salt="tenant-1"), [cand("a")])["a"] == 1.0
    assert plugin.score(request(body, lora="ad"), [cand("a")]) == {"a": 0.0}
    assert plugin.score(request(body, salt="tenant-1"), [cand("a")]) == {"a": 0.0}
    assert plugin.score(request(body, lora="ad", salt="tenant-2"), [cand("a")]) == {"a": 0.0}


def test_speculative_credit_until_the_events_arrive():
    now = [0.0]
    index = PreciseIndex(clock=lambda: now[0])
    index.reset("a", synced=True)
    index.reset("b", synced=True)
    plugin = build(index, speculative=True, speculativeTtlSeconds=2.0)
    body = chat("ops", "Restart the service")
    first = request(body)
    plugin.score(first, [cand("a"), cand("b")])
    plugin.pre_request(first, Endpoint("a", "127.0.0.1", 8000))
    assert plugin.score(request(body), [cand("a"), cand("b")]) == {"a": 1.0, "b": 0.0}
    now[0] = 3.0
    assert plugin.score(request(body), [cand("a"), cand("b")]) == {"a": 0.0, "b": 0.0}
    # A pod that never answered gets no credit; one that answered keeps it.
    for responded, want in ((False, 0.0), (True, 1.0)):
        ctx = request(body)
        plugin.score(ctx, [cand("b")])
        plugin.pre_request(ctx, Endpoint("b", "127.0.0.1", 8000))
        plugin.request_failed(ctx, AttemptReport(Endpoint("b", "127.0.0.1", 8000), responded=responded))
        assert plugin.score(request(body), [cand("b")]) == {"b": want}
    index.unspeculate("b", plugin.cycle_match(ctx).keys[BLOCK])
    off = build(index, speculative=False)
    ctx = request(body)
    off.score(ctx, [cand("b")])
    off.pre_request(ctx, Endpoint("b", "127.0.0.1", 8000))
    assert off.score(request(body), [cand("b")]) == {"b": 0.0}


def test_two_replicas_fed_the_same_events_give_identical_scores():
    one, two = PreciseIndex(), PreciseIndex()
    pods = [FedPod(f"p{i}", one, two) for i in range(3)]
    rng = random.Random(7)
    topics = ["a", "b", "c", "d"]
    for n in range(12):
        rng.choice(pods).serve(chat(rng.choice(topics), f"question {n}"))
    replica1, replica2 = build(one), build(two)
    cands = [cand(p.name) for p in pods]
    for topic in topics:
        body = chat(topic, "question 3")
        assert replica1.score(request(body), cands) == replica2.score(request(body), cands)


def test_named_approximate_plugin_is_used_as_the_fallback():
    deps = PluginDeps(Datastore(), kv_index=PreciseIndex())
    approx = PrefixCacheScorer("approx")
    deps.plugins["approx"] = approx
    plugin = factory("precise", {"prefixCachePlugin": "approx"}, deps)
    assert plugin.fallback is approx


def test_the_scheduler_reports_the_precise_ratio_and_picks_by_it():
    index = PreciseIndex()
    a, b = FedPod("a", index), FedPod("b", index)
    body = chat("support", "My order is late")
    b.serve(body)
    config = EndpointPickerConfig.model_validate(
        {
            "plugins": [
                {"type": "prefix-cache-scorer"},
                {
                    "type": "precise-prefix-cache-scorer",
                    "parameters": {"prefixCachePlugin": "prefix-cache-scorer"},
                },
                {"type": "max-score-picker"},
            ],
            "schedulingProfiles": [
                {
                    "name": "default",
                    "plugins": [
                        {"pluginRef": "precise-prefix-cache-scorer", "weight": 1},
                        {"pluginRef": "max-score-picker"},
                    ],
                }
            ],
        }
    )
    ds = Datastore(staleness_s=3600.0)
    ds.set_endpoints([Endpoint("a", "127.0.0.1", 8001), Endpoint("b", "127.0.0.1", 8002)])
    for name in ("a", "b"):
        ds.update_metrics(name, MetricsSnapshot(waiting=0, running=0, kv_cache_usage=0.0, scraped_at=1e12))
    scheduler = build_scheduler(config, ds, default_registry(), random.Random(0), kv_index=index)
    result = scheduler.schedule(request(body).request)
    assert result.endpoint.name == "b" and result.prefix_match_ratio == 1.0
    assert a.engine.pool.num_cached == 0


def test_prefix_affinity_filter_reads_the_precise_ratios() -> None:
    """PREFIX_CACHE's rule over the precise scorer: the pod the events name is kept although it is the busier
    one, which least-request alone would avoid; a prompt nobody holds goes to the idle pod."""
    index = PreciseIndex()
    a, b = FedPod("a", index), FedPod("b", index)
    body = chat("support", "My order is late")
    b.serve(body)
    config = EndpointPickerConfig.model_validate(
        {
            "plugins": [
                {"type": "prefix-cache-scorer"},
                {"type": "precise-prefix-cache-scorer", "parameters": {"speculative": False}},
                {
                    "type": "prefix-affinity-filter",
                    "parameters": {"prefixPluginRef": "precise-prefix-cache-scorer"},
                },
                {"type": "least-request-scorer"},
                {"type": "max-score-picker"},
            ],
            "schedulingProfiles": [
                {
                    "name": "default",
                    "plugins": [
                        {"pluginRef": "precise-prefix-cache-scorer", "weight": 0},
                        {"pluginRef": "prefix-affinity-filter"},
                        {"pluginRef": "least-request-scorer", "weight": 1},
                        {"pluginRef": "max-score-picker"},
                    ],
                }
            ],
        }
    )
    ds = Datastore(staleness_s=3600.0)
    ds.set_endpoints([Endpoint("a", "127.0.0.1", 8001), Endpoint("b", "127.0.0.1", 8002)])
    ds.update_metrics("a", MetricsSnapshot(waiting=0, running=0, kv_cache_usage=0.0, scraped_at=1e12))
    ds.update_metrics("b", MetricsSnapshot(waiting=0, running=3, kv_cache_usage=0.0, scraped_at=1e12))
    scheduler = build_scheduler(config, ds, default_registry(), random.Random(0), kv_index=index)
    held = scheduler.schedule(request(body).request)
    assert held.endpoint.name == "b" and held.affinity_narrowed
    cold = scheduler.schedule(request(chat("travel", "Book me a hotel.")).request)
    assert cold.endpoint.name == "a" and not cold.affinity_narrowed
    assert a.engine.pool.num_cached == 0


async def _feed(sub: KVEventSubscriber, index: PreciseIndex, pod: str, applied: asyncio.Event) -> None:
    async for message in sub.messages():
        index.apply(pod, message)
        applied.set()


@pytest.mark.slow
async def test_live_simulator_events_and_the_pods_own_tokenization_agree():
    """Requests sent to real simulated pods over HTTP; their ZMQ events; keys from the same bodies."""
    config = KVEventsConfig("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "kv@sim")
    ctx = zmq.asyncio.Context()
    index = PreciseIndex()
    async with (
        SimFleet(pods=2, profile="tiny", time_scale=20.0, kv_events=config, lora_modules=("ad",)) as fleet,
        httpx.AsyncClient(timeout=30.0) as client,
    ):
        subs, tasks = [], []
        applied = asyncio.Event()
        for i, url in enumerate(fleet.urls):
            [src] = parse_sources((await client.get(f"{url}/kv_event_sources")).json(), "127.0.0.1")
            sub = KVEventSubscriber(ctx, src.endpoint, replay_endpoint=src.replay_endpoint, topic="kv@sim")
            subs.append(sub)
            index.reset(f"pod{i}", synced=True)
            tasks.append(asyncio.create_task(_feed(sub, index, f"pod{i}", applied)))
        await asyncio.sleep(0.2)  # let the subscriptions reach the publishers; replay covers the rest
        plugin = build(index)
        cands = [cand("pod0"), cand("pod1")]
        plain = {**chat("travel", "Book me a hotel."), "max_tokens": 1}
        salted = {
            **chat("travel", "Book me a hotel."),
            "max_tokens": 1,
            "cache_salt": "t1",
            "model": "ad",
        }
        for body in (plain, salted):
            r = await client.post(f"{fleet.urls[1]}/v1/chat/completions", json=body)
            assert r.status_code == 200
        async with asyncio.timeout(20):
            while index.entries("pod1") < 2 * (len(TOKENIZER.tokenize(plain) or []) // BLOCK):
                applied.clear()
                await applied.wait()
        assert plugin.score(request(plain), cands) == {"pod0": 0.0, "pod1": 1.0}
        assert plugin.score(request(salted, lora="ad", salt="t1"), cands) == {"pod0": 0.0, "pod1": 1.0}
        assert plugin.score(request(salted, lora="ad", salt="t2"), cands) == {"pod0": 0.0, "pod1": 0.0}
        # What the pod really holds: every full block of the prompt, under the pod's own hashes.
        ids = TOKENIZER.tokenize(plain)
        assert ids is not None
        pool = fleet.pods[1].engine.pool
        assert len(pool.lookup(block_hashes(ids, BLOCK), 10**6)) == len(ids) // BLOCK
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in subs:
            sub.close()
    ctx.term()
