"""KVEventFollower: one subscription per pod of the datastore, resync on gaps and restarts, config, wiring.

Simulated pods (bench.sim, their real publisher) for live events, discovery, restarts and bind mode; the
`FakePublisher` of tests/kv_event_support.py only where a message must be dropped mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest
import zmq.asyncio

from bench.sim.fleet import SimFleet
from bench.sim.kv_events import KVEventsConfig
from epp.config import ConfigError, load_config, load_config_text
from epp.config.cli import check_scheduler
from epp.config.kv_events import KVEventSourceSpec, KVEventsSpec, ReconnectSpec, effective_kv_events
from epp.core import PickerCore, merge_endpoints
from epp.datastore import Datastore, Endpoint
from epp.kv_events.follower import KVEventFollower
from epp.kv_events.follower_status import NOT_SUBSCRIBED, SYNCED, UNKNOWN
from epp.kv_events.sources import (
    SourceAddress,
    SourceError,
    configured_sources,
    parse_sources,
    reachable,
)
from tests.kv_event_support import CLEARED, FakePublisher, RecordingSink, eventually, removed, stored

SIM_EVENTS = KVEventsConfig("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "kv@sim")


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


def _pods(fleet: SimFleet) -> list[Endpoint]:
    return [Endpoint(f"pod{i}", e.host, e.port) for i, e in enumerate(fleet.endpoints)]


async def _complete(client: httpx.AsyncClient, url: str, seed: int, n: int = 300) -> None:
    ids = [(i * 7 + seed) % 1000 for i in range(n)]  # inside the tiny model's vocabulary
    r = await client.post(
        f"{url}/v1/completions", json={"model": "tiny-llama", "prompt": ids, "max_tokens": 1}
    )
    assert r.status_code == 200, r.text


def _resets_after(sink: RecordingSink, pod: str, index: int) -> list[tuple[str, str, object]]:
    return [e for e in sink.log[index:] if e[0] == pod and e[1] == "reset"]


# -- sources and config ----------------------------------------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures" / "vllm" / "vllm-0.32"


def test_sources_from_vllm_032s_answer() -> None:
    # Captured from real vLLM 0.32 started with {"endpoint": "tcp://*:58903", "topic": "kv"}.
    body = json.loads((FIXTURES / "kv-event-sources.json").read_text())
    assert parse_sources(body, "10.0.0.7") == [SourceAddress("tcp://10.0.0.7:58903", None, "kv", 0)]
    two_ranks = {"1": {**body["0"], "endpoint": "tcp://*:58904"}, **body}
    assert [s.rank for s in parse_sources(two_ranks, "h")] == [0, 1]
    assert parse_sources({"0": {**body["0"], "publisher": "null"}}, "h") == []
    with pytest.raises(SourceError, match="bind: true"):
        parse_sources({"0": {**body["0"], "endpoint": "tcp://10.0.0.9:5557"}}, "h")
    with pytest.raises(SourceError, match="no port to dial"):
        parse_sources({"0": {**body["0"], "endpoint": "tcp://*:*"}}, "h")
    with pytest.raises(SourceError):
        parse_sources("nope", "h")


def test_sources_from_vllm_answers_and_templates() -> None:
    bare = [{"data_parallel_rank": 0, "endpoint": "tcp://*:5557", "replay_endpoint": None, "topic": "kv"}]
    assert parse_sources(bare, "10.0.0.7") == [SourceAddress("tcp://10.0.0.7:5557", None, "kv", 0)]
    wrapped = {
        "sources": [
            {
                "data_parallel_rank": 1,
                "endpoint": "tcp://0.0.0.0:41002",
                "replay_endpoint": None,
                "topic": "",
            },
            {
                "data_parallel_rank": 0,
                "endpoint": "tcp://0.0.0.0:41001",
                "replay_endpoint": "tcp://0.0.0.0:41003",
                "topic": "",
            },
        ]
    }
    got = parse_sources(wrapped, "fd00::1")
    assert [s.rank for s in got] == [0, 1] and got[0].replay_endpoint == "tcp://[fd00::1]:41003"
    assert (
        reachable("tcp://10.1.1.1:5557", "h") == "tcp://10.1.1.1:5557"
        and reachable("ipc:///x", "h") == "ipc:///x"
    )
    spec = KVEventsSpec(
        endpoint="tcp://{host}:5557",
        replayEndpoint="tcp://{host}:5657",
        topic="kv@{name}",
        pods={"b": KVEventSourceSpec(endpoint="tcp://1.2.3.4:{port}")},
    )
    assert configured_sources(spec, Endpoint("a", "10.0.0.1", 8000)) == [
        SourceAddress("tcp://10.0.0.1:5557", "tcp://10.0.0.1:5657", "kv@{name}")
    ]
    assert configured_sources(spec, Endpoint("b", "10.0.0.2", 8001)) == [
        SourceAddress("tcp://1.2.3.4:8001", None, "kv@{name}")
    ]
    assert configured_sources(KVEventsSpec(discover=True), Endpoint("a", "h", 1)) is None
    assert effective_kv_events(None, ["precise-prefix-cache-scorer"]) == KVEventsSpec(discover=True)
    assert effective_kv_events(None, ["prefix-cache-scorer"]) is None
    assert effective_kv_events(KVEventsSpec(enabled=False), ["precise-prefix-cache-scorer"]) is None


PICKER = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
metadata: {{name: kv}}
plugins:
- type: least-request-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: least-request-scorer}}, {{pluginRef: max-score-picker}}]
kvEvents:
{body}
"""


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ("  discover: true\n  endpoint: tcp://{host}:5557", "kvEvents", "not both"),
        ("  endpoint: http://{host}:5557", "kvEvents.endpoint", "must start with one of tcp://"),
        ("  endpoint: tcp://{pod}:5557", "kvEvents.endpoint", "unknown placeholder {pod}"),
        ("  discover: true\n  bind: true", "kvEvents", "bind: true needs explicit endpoints"),
        ("  enabled: true", "kvEvents", "needs discover: true"),
        (
            "  discover: true\n  rebuildAfterSeconds: -1",
            "kvEvents.rebuildAfterSeconds",
            "greater than or equal",
        ),
        ("  discover: true\n  replayTimeoutMs: true", "kvEvents.replayTimeoutMs", "integer"),
        (
            "  discover: true\n  reconnect: {initialSeconds: 2, maxSeconds: 1}",
            "kvEvents.reconnect",
            "maxSeconds",
        ),
        ("  discover: true\n  bogus: 1", "kvEvents.bogus", "unknown field"),
    ],
)
def test_bad_kv_events_sections_name_the_file_and_field(body: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(PICKER.format(body=body), {}, source="picker.yaml")
    text = str(info.value)
    assert "picker.yaml" in text and field in text and reason in text, text


def test_a_good_section_loads() -> None:
    config = load_config_text(PICKER.format(body="  discover: true\n  rebuildAfterSeconds: 5"), {})
    spec = config.picker_config.kv_events
    assert spec is not None and spec.discover and spec.rebuild_after_seconds == 5.0


# -- simulated pods ---------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_discovered_pods_feed_the_sink_and_a_removed_pod_is_unsubscribed() -> None:
    async with SimFleet(pods=2, profile="cpu-tiny", time_scale=20.0, kv_events=SIM_EVENTS) as fleet:
        datastore = Datastore()
        datastore.set_endpoints(_pods(fleet))
        sink = RecordingSink()
        follower = KVEventFollower(datastore, sink, KVEventsSpec(discover=True))
        follower.start()
        try:
            # A young engine's replay buffer is empty: nothing was published, the (empty) view is exact.
            await eventually(lambda: all(sink.is_synced(p) for p in ("pod0", "pod1")), what="both synced")
            assert follower.status("pod0").reason == "nothing published yet"
            async with httpx.AsyncClient(timeout=30.0) as client:
                await _complete(client, fleet.urls[0], seed=1)
                cached = fleet.pods[0].engine.pool.cached_hashes
                await eventually(lambda: sink.hashes("pod0") == cached() != set(), what="pod0's blocks")
                assert sink.hashes("pod1") == set() and follower.status("pod1").state == SYNCED
                status = follower.status("pod0")
                assert status.messages >= 1 and status.last_seq is not None and status.sources
                assert status.sources[0].startswith("tcp://127.0.0.1:")

                datastore.set_endpoints(_pods(fleet)[1:])
                mark = len(sink.log)
                assert ("pod0", "reset", False) in sink.log[mark - 1 :]
                assert follower.status("pod0").state == NOT_SUBSCRIBED
                await _complete(client, fleet.urls[0], seed=2)
                await _complete(client, fleet.urls[1], seed=3)  # pod1 still followed: proves time passed
                await eventually(lambda: sink.hashes("pod1") == fleet.pods[1].engine.pool.cached_hashes())
                assert [e for e in sink.log[mark:] if e[0] == "pod0"] == [] and sink.hashes("pod0") == set()
        finally:
            await follower.stop()


@pytest.mark.slow
async def test_a_pod_restarted_on_the_same_port_keeps_no_credit_for_its_old_blocks() -> None:
    async with SimFleet(pods=1, profile="cpu-tiny", time_scale=20.0, kv_events=SIM_EVENTS) as fleet:
        datastore = Datastore()
        datastore.set_endpoints(_pods(fleet))
        sink = RecordingSink()
        follower = KVEventFollower(datastore, sink, KVEventsSpec(discover=True, rebuildAfterSeconds=0))
        follower.start()
        pool = lambda: fleet.pods[0].engine.pool  # noqa: E731 - the engine is replaced by a restart
        try:
            async with httpx.AsyncClient(timeout=30.0) as client:
                await eventually(lambda: sink.is_synced("pod0"))
                await _complete(client, fleet.urls[0], seed=1)
                await eventually(lambda: sink.hashes("pod0") == pool().cached_hashes() != set())
                old = sink.hashes("pod0")
                assert (await client.post(f"{fleet.urls[0]}/sim/restart")).status_code == 200
                mark = len(sink.log)
                await _complete(client, fleet.urls[0], seed=500)  # other blocks: seq 0 of the new engine
                await eventually(lambda: follower.status("pod0").restarts == 1, what="restart detected")
                await eventually(
                    lambda: sink.is_synced("pod0") and sink.hashes("pod0") == pool().cached_hashes()
                )
                assert _resets_after(sink, "pod0", mark)  # dropped at detection ...
                assert not (sink.hashes("pod0") & old - pool().cached_hashes())  # ... and nothing stale since
                assert follower.status("pod0").reason == "followed from seq 0"
        finally:
            await follower.stop()


@pytest.mark.slow
async def test_bind_mode_a_connecting_publisher_reaches_the_sink() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    # A plain address: the simulated pod's publisher connects, epp binds (vLLM's non-wildcard endpoint).
    async with SimFleet(
        pods=1, profile="cpu-tiny", time_scale=20.0, kv_events=KVEventsConfig(endpoint)
    ) as fleet:
        datastore = Datastore()
        datastore.set_endpoints(_pods(fleet))
        sink = RecordingSink()
        spec = KVEventsSpec(bind=True, pods={"pod0": KVEventSourceSpec(endpoint=endpoint)})
        follower = KVEventFollower(datastore, sink, spec)
        follower.start()
        try:
            await eventually(lambda: follower.status("pod0").state == UNKNOWN, what="bound")
            assert follower.status("pod0").sources == [endpoint]
            await asyncio.sleep(0.3)  # the publisher's reconnect (100 ms) reaches the bound socket
            async with httpx.AsyncClient(timeout=30.0) as client:
                await _complete(client, fleet.urls[0], seed=1)
            cached = fleet.pods[0].engine.pool.cached_hashes
            await eventually(
                lambda: sink.hashes("pod0") == cached() != set(), what="events over the bound socket"
            )
            await eventually(lambda: sink.is_synced("pod0"), what="seq 0 seen: synced")
        finally:
            await follower.stop()


@pytest.mark.slow
async def test_picker_core_follows_kv_events_and_the_scrapers_restart_resets(tmp_path: Path) -> None:
    async with SimFleet(pods=1, profile="cpu-tiny", time_scale=20.0, kv_events=SIM_EVENTS) as fleet:
        (tmp_path / "picker.yaml").write_text(PICKER.format(body="  discover: true"))
        config = load_config([tmp_path / "picker.yaml"], {})
        core = PickerCore(
            config, merge_endpoints(config, f"{fleet.endpoints[0].host}:{fleet.endpoints[0].port}"), 1.0, 1
        )
        assert core.kv_index is not None and core.kv_follower is not None
        assert core.scheduler is not None
        name = core.datastore.endpoints()[0].name
        core.start_scraping(interval_s=0.05, timeout_s=1.0)
        try:
            await eventually(lambda: core.kv_index is not None and core.kv_index.is_synced(name))
            health = core.health()["kvEvents"]
            assert isinstance(health, dict) and health[name]["state"] == SYNCED
            async with httpx.AsyncClient(timeout=30.0) as client:
                await _complete(client, fleet.urls[0], seed=1)
                await eventually(
                    lambda: core.kv_follower is not None and core.kv_follower.status(name).messages > 0
                )
                assert (await client.post(f"{fleet.urls[0]}/sim/restart")).status_code == 200
            # No traffic after the restart: only the scraper (process start time changed) can tell.
            await eventually(
                lambda: core.kv_follower is not None and core.kv_follower.status(name).resets >= 1
            )
            # Discovered again: the new engine's replay buffer is empty, so its view is exact at once.
            await eventually(lambda: core.kv_index is not None and core.kv_index.is_synced(name))
            assert "epp_kv_events_synced" in core.metrics.render().decode()
        finally:
            await core.close()


# -- dropped messages (FakePublisher) ----------------------------------------------------------------------
async def _heartbeat_until_applied(pub: FakePublisher, sink: RecordingSink, pod: str) -> None:
    async with asyncio.timeout(20):
        while not any(e[0] == pod and e[1] == "apply" for e in sink.log):
            await pub.send(stored(0))
            await asyncio.sleep(0.02)


async def test_a_gap_filled_by_replay_never_makes_the_view_unknown(ctx: zmq.asyncio.Context) -> None:
    pub = FakePublisher(ctx)
    datastore = Datastore()
    datastore.set_endpoints([Endpoint("p", "127.0.0.1", 1)])
    sink = RecordingSink()
    spec = KVEventsSpec(
        topic="kv", pods={"p": KVEventSourceSpec(endpoint=pub.endpoint, replayEndpoint=pub.replay_endpoint)}
    )
    follower = KVEventFollower(datastore, sink, spec)
    follower.start()
    try:
        await eventually(lambda: sink.is_synced("p"))
        mark = len(sink.log)
        await _heartbeat_until_applied(pub, sink, "p")
        await pub.send(stored(7, parent=0), drop=True)
        await pub.send(removed(0))
        await eventually(lambda: follower.status("p").gaps_filled >= 1)
        await eventually(lambda: sink.hashes("p") == {7})
        assert _resets_after(sink, "p", mark) == [] and sink.is_synced("p")
        assert follower.status("p").state == SYNCED
    finally:
        await follower.stop()
        await pub.close()


async def test_a_lost_gap_drops_the_pods_blocks_until_rebuilt(ctx: zmq.asyncio.Context) -> None:
    pub = FakePublisher(ctx, replay=False)
    datastore = Datastore()
    datastore.set_endpoints([Endpoint("p", "127.0.0.1", 1)])
    sink = RecordingSink()
    spec = KVEventsSpec(
        topic="kv", rebuildAfterSeconds=0.5, pods={"p": KVEventSourceSpec(endpoint=pub.endpoint)}
    )
    follower = KVEventFollower(datastore, sink, spec)
    follower.start()
    try:
        await _heartbeat_until_applied(pub, sink, "p")
        await pub.send(CLEARED)  # an exact rebuild: the cache was empty here
        await eventually(lambda: sink.is_synced("p"))
        assert follower.status("p").reason == "AllBlocksCleared applied"
        await pub.send(stored(5))
        await eventually(lambda: 5 in sink.hashes("p"))
        lost_before = follower.status("p").lost_messages
        await pub.send(removed(5), drop=True)  # the eviction is lost ...
        await pub.send(stored(6))
        # ... so block 5 must not keep its credit: dropped with the rest, view unknown.
        await eventually(lambda: follower.status("p").state == UNKNOWN)
        assert not sink.is_synced("p") and 5 not in sink.hashes("p")
        assert follower.status("p").lost_messages == lost_before + 1
        await eventually(lambda: sink.hashes("p") == {6})  # what follows the hole is kept: a subset
        await eventually(lambda: sink.is_synced("p"), within_s=20)  # followed 0.5 s without a gap
        assert follower.status("p").reason.startswith("followed for 0.5s")
        assert 5 not in sink.hashes("p")
    finally:
        await follower.stop()
        await pub.close()


async def test_an_unreachable_discovery_retries_with_back_off() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    datastore = Datastore()
    datastore.set_endpoints([Endpoint("p", "127.0.0.1", port)])
    sink = RecordingSink()
    spec = KVEventsSpec(discover=True, reconnect=ReconnectSpec(initialSeconds=0.01, maxSeconds=0.05))
    follower = KVEventFollower(datastore, sink, spec)
    follower.start()
    try:
        await eventually(lambda: "kv_event_sources" in follower.status("p").reason)
        assert follower.status("p").state == NOT_SUBSCRIBED and not sink.is_synced("p")
    finally:
        await follower.stop()


PRECISE = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
metadata: {name: precise}
plugins:
- type: precise-prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: precise-prefix-cache-scorer}, {pluginRef: max-score-picker}]
"""


def test_a_precise_scorer_without_a_section_discovers_the_pods_events() -> None:
    config = load_config_text(PRECISE, {})
    check_scheduler(config)  # `epp config check` builds it with an index too
    core = PickerCore(config, [Endpoint("p", "127.0.0.1", 1)], 1.0, 1)
    assert core.kv_index is not None and core.kv_follower is not None
    assert core.kv_follower.spec == KVEventsSpec(discover=True)
    plain = PickerCore(load_config_text(PICKER.format(body="  enabled: false"), {}), [], 1.0, 1)
    assert plain.kv_index is None and plain.kv_follower is None and "kvEvents" not in plain.health()


def _fake_discovery(sources: Sequence[Mapping[str, object]]) -> httpx.AsyncClient:
    """FakeDiscovery: a pod with two data-parallel ranks (the simulator serves one)."""
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=sources)))


async def test_a_loss_on_one_rank_needs_every_rank_rebuilt(ctx: zmq.asyncio.Context) -> None:
    rank0 = FakePublisher(ctx)
    rank1 = FakePublisher(ctx, buffer_steps=1)  # a gap on rank 1 cannot be filled
    sources = [
        {"data_parallel_rank": r, "endpoint": p.endpoint, "replay_endpoint": p.replay_endpoint, "topic": "kv"}
        for r, p in ((0, rank0), (1, rank1))
    ]
    datastore = Datastore()
    datastore.set_endpoints([Endpoint("p", "127.0.0.1", 1)])
    sink = RecordingSink()
    client = _fake_discovery(sources)
    spec = KVEventsSpec(discover=True, rebuildAfterSeconds=0)
    follower = KVEventFollower(datastore, sink, spec, client=client)
    follower.start()
    try:
        await eventually(lambda: sink.is_synced("p") and len(follower.status("p").sources) == 2)
        for pub in (rank0, rank1):
            mark = len(sink.log)
            async with asyncio.timeout(20):
                while len([e for e in sink.log[mark:] if e[1] == "apply"]) == 0:
                    await pub.send(stored(0))
                    await asyncio.sleep(0.02)
        await rank1.send(removed(0), drop=True)
        await rank1.send(stored(1))
        await eventually(lambda: follower.status("p").state == UNKNOWN, what="rank 1's loss")
        await rank1.send(CLEARED)  # rank 1 rebuilt exactly ...
        mark = len(sink.log)
        seq = await rank0.send(stored(2))  # ... rank 0's stream is complete, but its blocks were dropped
        await eventually(lambda: ("p", "apply", seq) in sink.log[mark:], what="rank 0's message applied")
        assert not sink.is_synced("p") and follower.status("p").state == UNKNOWN
        await rank0.send(CLEARED)
        await eventually(lambda: sink.is_synced("p"), what="both ranks rebuilt")
    finally:
        await follower.stop()
        await client.aclose()
        await rank0.close()
        await rank1.close()


@pytest.mark.slow
async def test_explicit_sources_a_scraped_restart_of_an_idle_pod_is_exact_again_and_removal_forgets(
    tmp_path: Path,
) -> None:
    async with SimFleet(pods=1, profile="cpu-tiny", time_scale=20.0, kv_events=SIM_EVENTS) as fleet:
        publisher = fleet.pods[0].kv_events
        assert publisher is not None
        address = f"{fleet.endpoints[0].host}:{fleet.endpoints[0].port}"
        body = (
            f"  topic: kv@sim\n  pods:\n    {address!r}:\n      endpoint: {publisher.endpoint}\n"
            f"      replayEndpoint: {publisher.replay_endpoint}"
        )
        (tmp_path / "picker.yaml").write_text(PICKER.format(body=body))
        config = load_config([tmp_path / "picker.yaml"], {})
        core = PickerCore(config, merge_endpoints(config, address), 1.0, 1)
        index, follower = core.kv_index, core.kv_follower
        assert index is not None and follower is not None
        core.start_scraping(interval_s=0.05, timeout_s=1.0)
        try:
            await eventually(lambda: index.is_synced(address))
            async with httpx.AsyncClient(timeout=30.0) as client:
                await _complete(client, fleet.urls[0], seed=1)
                await eventually(lambda: index.entries(address) > 0, what="blocks indexed")
                assert (await client.post(f"{fleet.urls[0]}/sim/restart")).status_code == 200
            # Idle new engine: the scraper's RESTARTED drops the blocks, the fresh subscription's replay from
            # seq 0 finds nothing published yet: exact (empty) at once.
            await eventually(lambda: follower.status(address).resets >= 1, what="the scraper's restart")
            await eventually(lambda: index.is_synced(address))
            assert index.entries(address) == 0 and follower.status(address).reason == "nothing published yet"
            core.datastore.set_endpoints([])
            assert address not in index.pods() and follower.status(address).state == NOT_SUBSCRIBED
        finally:
            await core.close()
