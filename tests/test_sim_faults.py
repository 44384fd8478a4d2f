"""Fault injection of simulated pods, from the Python handle and the admin endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from bench.sim.fleet import SimFleet

BODY = {"prompt": "hello", "max_tokens": 2}


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(pods=2, profile="tiny", log_level="critical") as f:
        yield f


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


async def _set_fault(client: httpx.AsyncClient, url: str, **spec: object) -> None:
    r = await client.post(f"{url}/sim/fault", json=spec)
    assert r.status_code == 200 and r.json()["fault"]["mode"] == spec["mode"]


async def test_error_mode_returns_status_then_recovers(fleet, client):
    url, other = fleet.urls
    await _set_fault(client, url, mode="error", status=500)
    r = await client.post(f"{url}/v1/completions", json=BODY)
    assert r.status_code == 500 and r.json()["error"]["code"] == 500
    assert (await client.post(f"{other}/v1/completions", json=BODY)).status_code == 200  # per pod
    assert (await client.get(f"{url}/health")).status_code == 200
    fleet.pods[0].fault.set("error")  # the Python handle, default 503
    assert (await client.post(f"{url}/v1/completions", json=BODY)).status_code == 503
    await _set_fault(client, url, mode="none")
    assert (await client.post(f"{url}/v1/completions", json=BODY)).status_code == 200


async def test_hang_mode_answers_nothing_until_cleared(fleet, client):
    url = fleet.urls[0]
    fleet.pods[0].fault.set("hang")
    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"{url}/v1/completions", json=BODY, timeout=0.3)
    pending = asyncio.create_task(client.post(f"{url}/v1/completions", json=BODY))
    await asyncio.sleep(0.2)
    assert not pending.done()
    fleet.pods[0].fault.clear()
    r = await pending
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


async def test_close_mode_drops_connections(fleet, client):
    url = fleet.urls[0]
    await _set_fault(client, url, mode="close")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(f"{url}/v1/completions", json=BODY)
    assert (await client.get(f"{url}/metrics")).status_code == 200
    await _set_fault(client, url, mode="none")
    assert (await client.post(f"{url}/v1/completions", json=BODY)).status_code == 200


async def test_metrics_down_and_hang_keep_serving_inference(fleet, client):
    url = fleet.urls[0]
    await _set_fault(client, url, mode="metrics_down")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(f"{url}/metrics")
    assert (await client.post(f"{url}/v1/completions", json=BODY)).status_code == 200
    await _set_fault(client, url, mode="metrics_hang")
    with pytest.raises(httpx.ReadTimeout):
        await client.get(f"{url}/metrics", timeout=0.3)
    assert (await client.post(f"{url}/v1/completions", json=BODY)).status_code == 200
    await _set_fault(client, url, mode="none")
    assert (await client.get(f"{url}/metrics")).status_code == 200


@pytest.mark.parametrize(
    "spec", [b'{"mode": "explode"}', b'{"mode": "error", "status": 200}', b"nope", b"[]"]
)
async def test_bad_fault_spec_is_400(fleet, client, spec):
    r = await client.post(f"{fleet.urls[0]}/sim/fault", content=spec)
    assert r.status_code == 400 and "error" in r.json()


async def test_state_view_reports_queues_and_counters(fleet, client):
    url = fleet.urls[0]
    await client.post(f"{url}/v1/completions", json={"prompt": "word " * 100, "max_tokens": 2})
    state = (await client.get(f"{url}/sim/state")).json()
    assert state["waiting"] == [] and state["running"] == []
    assert state["kv"]["cached_blocks"] > 0 and state["counters"]["generation_tokens"] == 2


async def test_client_disconnect_aborts_request(fleet, client):
    url = fleet.urls[0]
    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 900}, timeout=0.2)
    for _ in range(100):
        state = (await client.get(f"{url}/sim/state")).json()
        if not state["running"]:
            break
        await asyncio.sleep(0.02)
    assert state["running"] == [] and state["counters"]["finished"] == {}  # vLLM does not count client aborts
