"""The KV-event follower against a real vLLM pod: discovery from its /kv_event_sources, sync, live events."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import httpx
import pytest

from epp.config.kv_events import KVEventsSpec
from epp.datastore import Datastore, Endpoint
from epp.kv_events.follower import KVEventFollower
from epp.kv_events.follower_status import SYNCED
from epp.kv_events.sources import discover
from tests.kv_event_support import RecordingSink, eventually
from tests.vllm.conftest import Pods
from tests.vllm.pods import BLOCK_SIZE, STARTUP_TIMEOUT_S, PodSpec, VllmPod
from tests.vllm.support import completion

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]


def _pod(pods: Pods) -> Endpoint:
    host, port = pods.addresses[0].rsplit(":", 1)
    return Endpoint("pod0", host, int(port))


async def test_discovery_reads_vllms_kv_event_sources(pods: Pods) -> None:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        [source] = await discover(client, _pod(pods))
    # The pods bind tcp://*:PORT (no replay endpoint): the wildcard is replaced by the pod's address.
    assert source.endpoint == pods.kv_endpoints[0]
    assert source.topic == "kv" and source.replay_endpoint is None and source.rank in (0, None)


async def test_the_follower_rebuilds_and_then_tracks_the_pod(pods: Pods) -> None:
    datastore = Datastore()
    datastore.set_endpoints([_pod(pods)])
    sink = RecordingSink()
    # No replay socket and POST /reset_prefix_cache is dev-mode only: an engine that published before epp
    # subscribed is rebuilt by the time window (a fresh one by its seq 0).
    follower = KVEventFollower(datastore, sink, KVEventsSpec(discover=True, rebuildAfterSeconds=1))
    follower.start()
    rng = random.Random()
    url = pods.urls[0]
    try:
        async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
            await eventually(lambda: bool(follower.status("pod0").sources), what="subscribed")
            # Until a message arrives the SUB socket may not be attached yet: prime until one is applied.
            for _ in range(20):
                prompt = [rng.randrange(3, 1000) for _ in range(BLOCK_SIZE)]
                answer = await client.post(f"{url}/v1/completions", json=completion(prompt, max_tokens=2))
                assert answer.status_code == 200, answer.text
                try:
                    await eventually(
                        lambda: follower.status("pod0").messages > 0, within_s=2, what="a message"
                    )
                    break
                except AssertionError:
                    continue
            await eventually(lambda: sink.is_synced("pod0"), what="rebuilt")
            assert follower.status("pod0").state == SYNCED
            before = sink.hashes("pod0")
            prompt = [rng.randrange(3, 1000) for _ in range(2 * BLOCK_SIZE + 5)]
            answer = await client.post(f"{url}/v1/completions", json=completion(prompt, max_tokens=2))
            assert answer.status_code == 200, answer.text
            await eventually(lambda: len(sink.hashes("pod0") - before) >= 2, what="the prompt's two blocks")
            assert sink.is_synced("pod0") and follower.status("pod0").gaps_filled == 0
    finally:
        await follower.stop()


async def test_a_restarted_vllm_process_keeps_no_credit_and_is_followed_from_seq_0(tmp_path: Path) -> None:
    """Its own pod (the session's are shared): stopped, then a new process on the same ports."""
    spec = PodSpec(core=1, log=tmp_path / "restart-a.log")
    first = VllmPod(spec)
    first.start()
    await asyncio.to_thread(first.wait_healthy, time.monotonic() + STARTUP_TIMEOUT_S)
    datastore = Datastore()
    datastore.set_endpoints([Endpoint("pod0", "127.0.0.1", spec.port)])
    sink = RecordingSink()
    follower = KVEventFollower(datastore, sink, KVEventsSpec(discover=True, rebuildAfterSeconds=0))
    follower.start()
    second: VllmPod | None = None
    rng = random.Random()
    try:
        async with httpx.AsyncClient(timeout=60, trust_env=False) as client:

            async def ask() -> None:
                prompt = [rng.randrange(3, 1000) for _ in range(2 * BLOCK_SIZE + 3)]
                answer = await client.post(
                    f"{spec.url}/v1/completions", json=completion(prompt, max_tokens=2)
                )
                assert answer.status_code == 200, answer.text

            await eventually(lambda: bool(follower.status("pod0").sources), what="subscribed")
            await asyncio.sleep(0.5)  # the SUB socket attaches; a young engine's seq 0 then makes it synced
            await ask()
            await eventually(lambda: sink.is_synced("pod0") and len(sink.hashes("pod0")) >= 2, what="synced")
            old = sink.hashes("pod0")
            await asyncio.to_thread(first.stop)
            # The dropped connection is noticed at once: every block of the old engine is dropped.
            await eventually(lambda: follower.status("pod0").restarts >= 1, what="the restart noticed")
            assert not sink.is_synced("pod0") and sink.hashes("pod0") == set()
            second = VllmPod(
                PodSpec(core=1, log=tmp_path / "restart-b.log", port=spec.port, kv_port=spec.kv_port)
            )
            second.start()
            await asyncio.to_thread(second.wait_healthy, time.monotonic() + STARTUP_TIMEOUT_S)
            await asyncio.sleep(1.5)  # ZeroMQ's reconnect (at most 1 s apart) reaches the new publisher
            await ask()
            await eventually(
                lambda: sink.is_synced("pod0") and len(sink.hashes("pod0")) >= 2, what="resynced"
            )
            assert follower.status("pod0").reason == "followed from seq 0"
            assert not sink.hashes("pod0") & old
    finally:
        await follower.stop()
        first.stop()
        if second is not None:
            second.stop()
