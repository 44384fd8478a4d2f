"""Pods that require an API key (vLLM --api-key): key sources, gateway, ext_proc answers, simulator."""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from bench.sim.app import PodApp
from bench.sim.fleet import SimFleet
from bench.sim.profiles import get_profile
from epp.pod_auth import PodCredentials, PodKeyError, headers_for_pod, load_pod_credentials
from epp.servers import extproc_messages as msg
from epp.servers.extproc import ExtProcServer
from gateway import cli as gateway_cli
from tests.test_gateway_support import addresses, chat, client_of, serving

POD_KEY = "pod-secret-0123456789"
CLIENT_KEY = "client-secret-9876543210"
BEARER_POD = f"Bearer {POD_KEY}"


class _Recorder:
    """Wraps a pod's ASGI app: the credentials of every HTTP request it receives."""

    def __init__(self, app: PodApp) -> None:
        self.app = app
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            creds = {k: v for k, v in headers.items() if k in ("authorization", "x-api-key")}
            self.seen.append((scope["path"], creds))
        await self.app(scope, receive, send)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[_Recorder]:
    """Every fleet started in the test serves its pods through a _Recorder (listed here)."""
    recorders: list[_Recorder] = []
    original = SimFleet.__init__

    def init(self: SimFleet, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        wrapped = [_Recorder(app) for app in self.apps]
        recorders.extend(wrapped)
        self.apps = wrapped  # type: ignore[assignment]

    monkeypatch.setattr(SimFleet, "__init__", init)
    return recorders


@pytest.fixture
async def keyed_fleet(recorded: list[_Recorder]) -> AsyncIterator[SimFleet]:
    async with SimFleet(pods=2, profile="tiny", time_scale=20.0, log_level="critical", api_key=POD_KEY) as f:
        yield f


def _all_seen(recorders: list[_Recorder]) -> list[tuple[str, dict[str, str]]]:
    return [entry for r in recorders for entry in r.seen]


# -- the key's sources ---------------------------------------------------------------------------------------


def test_key_from_file_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"  {POD_KEY}\n")
    creds = load_pod_credentials(str(path), {"EPP_POD_API_KEY": "ignored-the-flag-wins"})
    assert creds == PodCredentials(POD_KEY)
    assert creds is not None and creds.auth_headers() == {"authorization": BEARER_POD}


def test_key_from_env_and_none_without_either() -> None:
    assert load_pod_credentials(None, {"EPP_POD_API_KEY": f"{POD_KEY}\n"}) == PodCredentials(POD_KEY)
    assert load_pod_credentials(None, {}) is None


def test_empty_or_missing_key_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty-key"
    empty.write_text(" \n\t")
    with pytest.raises(PodKeyError, match=f"--pod-api-key-file {empty}: the pod API key is empty"):
        load_pod_credentials(str(empty), {})
    missing = tmp_path / "nope"
    with pytest.raises(PodKeyError, match=f"--pod-api-key-file {missing}: cannot read"):
        load_pod_credentials(str(missing), {})
    with pytest.raises(PodKeyError, match="EPP_POD_API_KEY: the pod API key is empty"):
        load_pod_credentials(None, {"EPP_POD_API_KEY": "  "})


def test_unusable_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("two words-secret\n")
    with pytest.raises(PodKeyError) as info:
        load_pod_credentials(str(path), {})
    assert "words-secret" not in str(info.value)


def test_credentials_never_show_the_key() -> None:
    creds = PodCredentials(POD_KEY)
    assert POD_KEY not in repr(creds) and POD_KEY not in str(creds) and POD_KEY not in f"{creds}"


def test_forwarding_rule() -> None:
    client = {"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY, "x-request-id": "r1"}
    assert headers_for_pod(None, client) == client  # no pod key: the client's credentials pass through
    forwarded = headers_for_pod(PodCredentials(POD_KEY), client)
    assert forwarded == {"authorization": BEARER_POD, "x-request-id": "r1"}


def test_gateway_cli_refuses_an_empty_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "key"
    path.write_text("\n")
    parser = argparse.ArgumentParser()
    gateway_cli.register(parser.add_subparsers())
    args = parser.parse_args(["gateway", "--pod-api-key-file", str(path), "--port", "0"])
    assert args.func(args) == 2
    assert f"--pod-api-key-file {path}: the pod API key is empty" in capsys.readouterr().err


# -- the simulator -------------------------------------------------------------------------------------------


async def test_sim_requires_the_key_on_v1_only_like_vllm() -> None:
    async with (
        SimFleet(pods=1, profile="tiny", log_level="critical", api_key=POD_KEY) as fleet,
        httpx.AsyncClient(base_url=fleet.urls[0], trust_env=False) as client,
    ):
        r = await client.get("/v1/models")
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        r = await client.get("/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        assert r.status_code == 401
        r = await client.get("/v1/models", headers={"Authorization": f"bearer {POD_KEY}"})
        assert r.status_code == 200 and r.json()["data"][0]["id"] == get_profile("tiny").model
        r = await client.post("/v1/chat/completions", json=chat("hi"), headers={"x-api-key": POD_KEY})
        assert r.status_code == 401  # vLLM reads Authorization only
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/health")).status_code == 200
        assert fleet.apps[0].unauthorized == 3


# -- the gateway ---------------------------------------------------------------------------------------------


async def test_gateway_sends_the_pod_key_and_never_the_clients(
    keyed_fleet: SimFleet, recorded: list[_Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = PodCredentials(POD_KEY)
    client_creds = {"Authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY}
    async with (
        serving(addresses(keyed_fleet), pod_credentials=creds, log_level="DEBUG") as gateway,
        client_of(gateway) as client,
    ):
        r = await client.get("/v1/models", headers=client_creds)
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["id"] == get_profile("tiny").model
        r = await client.post("/v1/chat/completions", json=chat("hello"), headers=client_creds)
        assert r.status_code == 200, r.text
        r = await client.post("/v1/chat/completions", json=chat("x", model="no-such-model"))
        assert r.status_code == 404  # the model check works: pods answered /v1/models
        assert POD_KEY not in r.text
    seen = _all_seen(recorded)
    v1 = [creds for path, creds in seen if path.startswith("/v1")]
    assert any(path == "/v1/models" for path, _ in seen)
    assert any(path == "/v1/chat/completions" for path, _ in seen)
    assert v1 and all(c == {"authorization": BEARER_POD} for c in v1)
    assert all(r.unauthorized == 0 for r in (rec.app for rec in recorded))
    assert CLIENT_KEY not in repr(seen)
    assert POD_KEY not in caplog.text and CLIENT_KEY not in caplog.text
    assert POD_KEY not in repr(gateway.options)


async def test_gateway_without_a_key_passes_client_credentials_through(recorded: list[_Recorder]) -> None:
    async with (
        SimFleet(pods=1, profile="tiny", time_scale=20.0, log_level="critical", api_key=CLIENT_KEY) as fleet,
        serving(addresses(fleet)) as gateway,
        client_of(gateway) as client,
    ):
        r = await client.post(
            "/v1/chat/completions", json=chat("hi"), headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        )
        assert r.status_code == 200, r.text
        r = await client.post("/v1/chat/completions", json=chat("hi"))
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}  # the pod's answer, relayed
    chats = [creds for path, creds in _all_seen(recorded) if path == "/v1/chat/completions"]
    assert chats == [{"authorization": f"Bearer {CLIENT_KEY}"}, {}]


async def test_keyless_gateway_over_keyed_pods_warns_once_without_secrets(
    keyed_fleet: SimFleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(addresses(keyed_fleet)) as gateway, client_of(gateway) as client:
        r = await client.get("/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        assert r.status_code == 503  # no pod answered the gateway's own lookup
        r = await client.get("/v1/models")
        assert r.status_code == 503
    warnings = [rec.getMessage() for rec in caplog.records if "refused GET /v1/models" in rec.getMessage()]
    assert len(warnings) == 2  # once per pod
    assert all("--pod-api-key-file" in w for w in warnings)
    assert CLIENT_KEY not in caplog.text and CLIENT_KEY not in r.text


# -- the Envoy path (ext_proc answers) -----------------------------------------------------------------------


def _mutation(common: pb.CommonResponse) -> tuple[dict[str, tuple[bytes, int]], list[str]]:
    mutation = common.header_mutation
    sets = {o.header.key: (o.header.raw_value, o.append_action) for o in mutation.set_headers}
    return sets, list(mutation.remove_headers)


@pytest.mark.parametrize("on_headers", [True, False])
def test_routing_answer_sets_the_pod_key_and_removes_x_api_key(on_headers: bool) -> None:
    creds = PodCredentials(POD_KEY)
    if on_headers:
        common = msg.route_on_headers("10.0.0.1:8000", creds).request_headers.response
    else:
        common = msg.route_on_body("10.0.0.1:8000", b"{}", creds).request_body.response
    sets, removed = _mutation(common)
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert sets["authorization"] == (BEARER_POD.encode(), overwrite)
    assert sets[msg.DESTINATION_HEADER] == (b"10.0.0.1:8000", overwrite)
    assert removed == ["x-api-key"]


def test_routing_answer_without_a_key_leaves_credentials_alone() -> None:
    sets, removed = _mutation(msg.route_on_body("10.0.0.1:8000", None).request_body.response)
    assert set(sets) == {msg.DESTINATION_HEADER} and removed == []
    sets, removed = _mutation(msg.route_on_headers("10.0.0.1:8000").request_headers.response)
    assert set(sets) == {msg.DESTINATION_HEADER} and removed == []


async def test_extproc_server_routes_with_the_pod_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.test_extproc_server as t

    keyed = functools.partial(ExtProcServer, pod_credentials=PodCredentials(POD_KEY))
    monkeypatch.setattr(t, "ExtProcServer", keyed)  # the harness of the ext_proc tests, with a pod key
    async for h in t._serve():
        call = h.stub.Process()
        await t.exchange(call, t.headers_msg("/v1/chat/completions", authorization=f"Bearer {CLIENT_KEY}"))
        resp = await t.exchange(call, t.body_msg(t.chat()))
        assert resp.WhichOneof("response") == "request_body"
        sets, removed = _mutation(resp.request_body.response)
        assert sets["authorization"][0] == BEARER_POD.encode() and removed == ["x-api-key"]
        await call.done_writing()


# -- through a real Envoy ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_envoy_routes_to_keyed_pods_with_the_pod_key(tmp_path: Path) -> None:
    from bench.envoy_stack.stack import EnvoyStack, StackOptions
    from bench.sim.process import SimProcess

    key_file = tmp_path / "pod-key"
    key_file.write_text(f"{POD_KEY}\n")
    sim_args = ["--pods", "2", "--profile", "tiny", "--base-port", "0", "--api-key", POD_KEY]
    with SimProcess(sim_args) as sim:
        pods = [url.removeprefix("http://") for url in sim.urls]
        options = StackOptions(serve_args=("--seed", "1", "--pod-api-key-file", str(key_file)))
        with (
            EnvoyStack(pods, options) as stack,
            httpx.Client(base_url=stack.base_url, timeout=30, trust_env=False) as client,
        ):
            headers = {"Authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY}
            r = client.post("/v1/chat/completions", json=chat("hello"), headers=headers)
            assert r.status_code == 200, r.text  # the pods accept only the pod key: Envoy overwrote it
            r = client.post("/v1/chat/completions", json=chat("x", model="no-such-model"))
            assert r.status_code == 404, r.text  # epp's model lookup reached the keyed pods
            assert POD_KEY not in r.text
            assert stack.epp is not None and stack.envoy is not None
            assert POD_KEY not in stack.epp.log_text() and POD_KEY not in stack.envoy.log_text()
