"""File discovery for real: a YAML file of endpoints, reloaded on change; an in-flight request to an endpoint
the file drops still completes (simulated pods behind an in-process gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bench.sim.fleet import SimFleet
from epp.datastore import Endpoint
from epp.discovery.file_source import FileDiscovery, FileFormatError, parse_discovery_file
from epp.discovery.options import DiscoveryOptions
from gateway.server import Gateway, GatewayOptions, build_gateway
from tests.test_gateway_support import chat, client_of
from tests.test_serve_support import wait_until

FILE = """\
selector: {app: vllm}
endpoints:
  - {address: 10.0.0.1:8000, name: pod-a, labels: {app: vllm, zone: a}}
  - {address: "[fd00::2]:8000", labels: {app: vllm}}
  - {address: 10.0.0.3:8000, name: other, labels: {app: web}}
"""


def test_the_file_format() -> None:
    a, b = parse_discovery_file(FILE)  # `other` is not selected
    assert (a.name, a.address, a.labels) == ("pod-a", "10.0.0.1:8000", (("app", "vllm"), ("zone", "a")))
    assert (b.name, b.address) == ("[fd00::2]:8000", "[fd00::2]:8000")
    assert parse_discovery_file("endpoints: []") == []


def test_a_static_endpoints_document_is_read_too() -> None:
    text = """\
apiVersion: epp.dev/v1alpha1
kind: StaticEndpoints
metadata: {name: local}
spec:
  endpoints: [{name: a, address: 127.0.0.1:8100}, {address: 127.0.0.1:8101}]
"""
    assert [e.address for e in parse_discovery_file(text)] == ["127.0.0.1:8100", "127.0.0.1:8101"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("endpoints: [{address: nohost}]", "endpoints.0.address"),
        ("endpoints: [{address: 1.2.3.4:1, name: a}, {address: 1.2.3.4:2, name: a}]", "used twice"),
        ("endpoint: []", "endpoint"),  # a typo'd field is an error, not an empty pool
        ("- a\n- b", "one YAML mapping"),
        ("endpoints: [", "not YAML"),
        ("a: &x 1\nb: *x", "not YAML"),  # the config loader's hostile-YAML rules apply
    ],
)
def test_bad_files_are_refused(text: str, reason: str) -> None:
    with pytest.raises(FileFormatError, match=reason):
        parse_discovery_file(text)


def write(path: Path, *addresses: str) -> None:
    """Rewrite the file atomically (as a ConfigMap update or `mv` does), with a new mtime."""
    lines = ["endpoints:"] + [f"  - {{address: {a}, name: {n}}}" for n, a in addresses_named(addresses)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def addresses_named(addresses: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(a.split("=")[0], a.split("=")[1]) for a in addresses]


async def test_the_file_is_followed_and_a_bad_version_keeps_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp.discovery")
    path = tmp_path / "pods.yaml"
    write(path, "a=10.0.0.1:8000", "b=10.0.0.2:8000")
    seen: list[list[Endpoint]] = []
    registry = CollectorRegistry()
    discovery = FileDiscovery(path, seen.append, registry, interval_s=0.02)
    discovery.start()  # read at once: the first picks see the endpoints
    try:
        assert [e.name for e in seen[-1]] == ["a", "b"]
        write(path, "b=10.0.0.2:8000", "c=10.0.0.3:8000")

        async def changed() -> bool:
            return [e.name for e in seen[-1]] == ["b", "c"]

        await wait_until(changed, "the new version")
        calls = len(seen)
        path.write_text("endpoints: [{address: broken}]\n")

        async def refused() -> bool:
            return not discovery.status.up

        await wait_until(refused, "the bad version to be refused")
        assert len(seen) == calls  # nothing handed over: the last endpoints stay
        assert registry.get_sample_value("epp_discovery_up", {"mode": "file"}) == 0
        await asyncio.sleep(0.1)  # a few more polls of the same bad file: still one warning
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "keeping the 2 last known endpoints" in warnings[0].getMessage()
        path.unlink()
        await asyncio.sleep(0.05)
        assert len(seen) == calls
        write(path, "b=10.0.0.2:8000", "c=10.0.0.3:8000")  # the same good version as before comes back

        async def up() -> bool:
            return discovery.status.up

        await wait_until(up, "the file to be good again")
        assert [e.name for e in seen[-1]] == ["b", "c"]
        assert registry.get_sample_value("epp_discovery_up", {"mode": "file"}) == 1
    finally:
        await discovery.close()


async def test_a_missing_file_at_start_is_an_empty_pool_said_so(tmp_path: Path) -> None:
    seen: list[list[Endpoint]] = []
    discovery = FileDiscovery(tmp_path / "absent.yaml", seen.append, CollectorRegistry(), interval_s=0.02)
    discovery.start()
    try:
        assert seen == [] and not discovery.status.up
        assert "cannot stat" in discovery.status.reason
        write(tmp_path / "absent.yaml", "a=10.0.0.1:8000")

        async def found() -> bool:
            return bool(seen) and discovery.status.up

        await wait_until(found, "the file to appear")
    finally:
        await discovery.close()


def pod_address(fleet: SimFleet, i: int) -> str:
    return fleet.urls[i].removeprefix("http://")


@contextlib.asynccontextmanager
async def gateway_over_file(path: Path, **extra: object) -> AsyncIterator[Gateway]:
    discovery = DiscoveryOptions("file", path, poll_interval_s=0.02)
    options = GatewayOptions(port=0, scrape_interval_s=0.02, seed=1, log_level="WARNING", discovery=discovery)
    gateway = build_gateway(options, {})
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def names_schedulable(gateway: Gateway, *names: str) -> None:
    async def ok() -> bool:
        return sorted(s.endpoint.name for s in gateway.datastore.schedulable()) == sorted(names) and sorted(
            e.name for e in gateway.datastore.endpoints()
        ) == sorted(names)

    await wait_until(ok, f"schedulable endpoints {names}")


async def test_a_request_in_flight_to_a_removed_endpoint_completes(tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    async with SimFleet(pods=2, profile="tiny") as fleet:
        write(path, f"pod-a={pod_address(fleet, 0)}")
        async with gateway_over_file(path) as gateway, client_of(gateway) as client:
            await names_schedulable(gateway, "pod-a")
            health = (await client.get("/healthz")).json()
            assert health["discovery"]["mode"] == "file" and health["discovery"]["up"] is True
            fleet.pods[0].fault.set("hang")  # pod-a holds the request until the fault is cleared
            in_flight = asyncio.create_task(client.post("/v1/chat/completions", json=chat("hello there")))

            async def sent() -> bool:
                state = gateway.datastore.get("pod-a")
                return state is not None and state.in_flight == 1

            await wait_until(sent, "the request to reach pod-a")
            write(path, f"pod-b={pod_address(fleet, 1)}")  # pod-a leaves the pool mid-request
            await names_schedulable(gateway, "pod-b")
            for _ in range(3):  # new picks go to pod-b only
                answer = await client.post("/v1/chat/completions", json=chat("a new one"))
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-epp-endpoint"] == "pod-b"
            assert not in_flight.done()
            fleet.pods[0].fault.clear()
            response: httpx.Response = await asyncio.wait_for(in_flight, 30)
            assert response.status_code == 200, response.text
            assert response.headers["x-epp-endpoint"] == "pod-a"
            assert response.json()["choices"][0]["message"]["content"]
            assert [s.in_flight for s in gateway.datastore.states()] == [0]
            write(path, f"pod-a={pod_address(fleet, 0)}", f"pod-b={pod_address(fleet, 1)}")  # it comes back
            await names_schedulable(gateway, "pod-a", "pod-b")
