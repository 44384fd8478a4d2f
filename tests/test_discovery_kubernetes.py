"""Kubernetes discovery against a FAKE apiserver (tests/fake_apiserver.py) serving recorded list/watch
streams (tests/fixtures/kube) over HTTP in the apiserver's wire format."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from epp.datastore import Endpoint
from epp.discovery.kube_client import KubeClient, KubeConnection, explicit
from epp.discovery.kubernetes import KubernetesDiscovery, PoolRef
from epp.discovery.options import WatchSettings
from tests.fake_apiserver import CLOSE, FakeApiServer, fixture
from tests.test_serve_support import wait_until

POOLS = "/apis/inference.networking.k8s.io/v1/namespaces/llm/inferencepools"
PODS = "/api/v1/namespaces/llm/pods"
MODELS = "/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/llm/inferencemodels"
POD = "vllm-qwen-7d9f8c6b5-"
FAST = WatchSettings(watch_timeout_s=60, backoff_initial_s=0.02, backoff_max_s=0.1, seed=1)


@dataclass
class Members:
    """What the discovery handed to its sink last."""

    endpoints: list[Endpoint] = field(default_factory=list)
    calls: int = 0

    def replace(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.calls += 1

    def names(self) -> set[str]:
        return {e.name.removeprefix(POD) for e in self.endpoints}

    async def become(self, *names: str) -> None:
        async def ok() -> bool:
            return self.names() == set(names)

        await wait_until(ok, f"endpoints {sorted(names)} (have {sorted(self.names())})", deadline_s=10)


def recorded_api(api: FakeApiServer, models: bool = True) -> None:
    api.collection(POOLS).lists = [fixture("pools-list.json")]
    api.collection(PODS).lists = [fixture("pods-list.json"), fixture("pods-list-relist.json")]
    if models:
        api.collection(MODELS).lists = [fixture("models-list.json")]


@contextlib.asynccontextmanager
async def discovering(
    api: FakeApiServer, connection: KubeConnection | None = None, model_names: frozenset[str] = frozenset()
) -> AsyncIterator[tuple[KubernetesDiscovery, Members, CollectorRegistry]]:
    members, registry = Members(), CollectorRegistry()
    pool = PoolRef("qwen-pool", "llm", "inference.networking.k8s.io/v1", model_names=model_names)
    discovery = KubernetesDiscovery(
        KubeClient(connection or explicit(api.url)), pool, members.replace, registry, FAST
    )
    discovery.start()
    try:
        yield discovery, members, registry
    finally:
        await discovery.close()


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"mode": "kubernetes", **labels})
    return 0.0 if value is None else value


async def watching(api: FakeApiServer, path: str, count: int = 1) -> None:
    async def opened() -> bool:
        return api.collection(path).watches_opened >= count

    await wait_until(opened, f"watch #{count} of {path}", deadline_s=10)


async def test_pods_added_made_unready_deleted_relabelled() -> None:
    async with FakeApiServer() as api:
        recorded_api(api)
        async with discovering(api) as (discovery, members, registry):
            await members.become("a1", "b2")  # -c3 is Pending: no IP, not Ready
            a1 = next(e for e in members.endpoints if e.name.endswith("a1"))
            assert (a1.host, a1.port) == ("10.244.1.11", 8000)
            assert dict(a1.labels)["app"] == "vllm-qwen"
            await watching(api, PODS)
            events = fixture("pods-watch.jsonl")
            pods = api.collection(PODS)
            pods.push(events[0])  # ADDED -d4
            await members.become("a1", "b2", "d4")
            pods.push(events[1])  # -c3 Ready with an IP
            await members.become("a1", "b2", "c3", "d4")
            pods.push(events[2])  # -a1 Ready=False
            await members.become("b2", "c3", "d4")
            pods.push(events[3])  # BOOKMARK: only the resourceVersion moves

            async def bookmarked() -> bool:
                return (
                    discovery.pod_reflector is not None and discovery.pod_reflector.resource_version == "1014"
                )

            await wait_until(bookmarked, "the bookmark's resourceVersion")
            assert members.names() == {"b2", "c3", "d4"}
            pods.push(events[4])  # -b2 terminating (deletionTimestamp)
            await members.become("c3", "d4")
            pods.push(events[5], events[6])  # -b2 DELETED; -d4 relabelled out of the selector
            await members.become("c3")
            assert metric(registry, "epp_discovery_events_total", resource="pods", type="BOOKMARK") == 1
            assert metric(registry, "epp_discovery_endpoints") == 1
            assert discovery.status.up

            pods.push(CLOSE)  # the server ends the watch (timeoutSeconds): watch again from the last version
            await watching(api, PODS, 2)
        first, second = api.requests_to(PODS, watch=True)[:2]
        assert first.query["resourceVersion"] == "1010"
        assert first.query["allowWatchBookmarks"] == "true"
        assert first.query["labelSelector"] == "app=vllm-qwen"
        assert second.query["resourceVersion"] == "1017"
        assert len(api.requests_to(PODS, watch=False)) == 1  # no relist for a watch that ended normally
        assert api.requests_to(POOLS)[0].query["fieldSelector"] == "metadata.name=qwen-pool"


async def test_watch_expiry_410_gone_relists() -> None:
    async with FakeApiServer() as api:
        recorded_api(api)
        async with discovering(api) as (discovery, members, registry):
            await members.become("a1", "b2")
            await watching(api, PODS)
            api.collection(PODS).push(*fixture("pods-watch-expired.jsonl"))
            await members.become("a1", "c3", "e5")  # the relist's ready pods that match the selector
            await watching(api, PODS, 2)
            assert metric(registry, "epp_discovery_events_total", resource="pods", type="relist") == 1
            assert discovery.status.up
        assert len(api.requests_to(PODS, watch=False)) == 2
        assert api.requests_to(PODS, watch=True)[-1].query["resourceVersion"] == "1630"


async def test_apiserver_unreachable_keeps_the_last_endpoints_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="epp.discovery")
    async with FakeApiServer() as api:
        recorded_api(api)
        async with discovering(api) as (discovery, members, registry):
            await members.become("a1", "b2")
            await watching(api, PODS)
            await api.stop()

            async def down() -> bool:
                return (
                    not discovery.status.up
                    and metric(registry, "epp_discovery_errors_total", resource="pods") >= 3
                )

            await wait_until(down, "the outage to be noticed, with retries")
            assert members.names() == {"a1", "b2"}  # kept
            assert metric(registry, "epp_discovery_up") == 0
            assert discovery.status.as_dict()["up"] is False
            assert "Connect" in str(discovery.status.as_dict()["reason"])  # the last retry's error
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            unreachable = [w for w in warnings if "unreachable" in w]
            assert len(unreachable) == 1, warnings  # one line per outage, not one per retry
            assert "keeping the 2 last known endpoints" in unreachable[0]

            await api.start()  # same port: the back-off finds it again

            async def up() -> bool:
                return discovery.status.up

            await wait_until(up, "the reconnect")
            assert metric(registry, "epp_discovery_up") == 1
            assert any("reachable again" in r.getMessage() for r in caplog.records)
            await watching(api, PODS, 2)
            api.collection(PODS).push(*fixture("pods-watch-after-outage.jsonl"))
            await members.become("a1", "b2", "f6")
        assert len(api.requests_to(PODS, watch=False)) == 1  # it watched on from its resourceVersion
        assert api.requests_to(PODS, watch=True)[-1].query["resourceVersion"] == "1010"


async def test_unreachable_from_the_start_then_up() -> None:
    api = FakeApiServer()
    await api.start()
    await api.stop()  # a port nobody listens on
    recorded_api(api)
    async with discovering(api) as (discovery, members, _):

        async def failing() -> bool:
            return discovery.status.since > 0 and not discovery.status.up

        await wait_until(failing, "the first failure")
        assert members.endpoints == []
        await api.start()
        await members.become("a1", "b2")
        assert discovery.status.up
    await api.stop()


async def test_pool_changes_retarget_and_reselect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="epp.discovery")
    async with FakeApiServer() as api:
        recorded_api(api)
        async with discovering(api) as (_discovery, members, _):
            await members.become("a1", "b2")
            await watching(api, POOLS)
            retarget, reselect = fixture("pools-watch-retarget.jsonl")
            api.collection(POOLS).push(retarget)  # two target ports: one endpoint per pod and port
            await members.become("a1-rank-0", "a1-rank-1", "b2-rank-0", "b2-rank-1")
            assert {e.port for e in members.endpoints} == {8000, 8001}
            api.collection(POOLS).push(reselect)  # a new selector: the pods are listed again with it
            await members.become("d4")
            assert api.requests_to(PODS, watch=False)[-1].query["labelSelector"] == "app=vllm-qwen-debug"
            assert any("annotations changed: restart to apply" in r.getMessage() for r in caplog.records)


async def test_inference_model_changes_ask_for_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="epp.discovery")
    async with FakeApiServer() as api:
        recorded_api(api)
        async with discovering(api, model_names=frozenset({"qwen"})) as (_, members, _registry):
            await members.become("a1", "b2")
            await watching(api, MODELS)
            assert not any("restart" in r.getMessage() for r in caplog.records)  # same models as the config
            api.collection(MODELS).push(*fixture("models-watch.jsonl"))

            async def logged() -> bool:
                return any(
                    "InferenceModels of pool qwen-pool changed: restart" in r.getMessage()
                    for r in caplog.records
                )

            await wait_until(logged, "the restart-to-apply line")


async def test_no_inference_model_api_is_not_an_outage() -> None:
    async with FakeApiServer() as api:
        recorded_api(api, models=False)  # 404: the CRD is not installed
        async with discovering(api) as (discovery, members, registry):
            await members.become("a1", "b2")
            await watching(api, PODS)
            assert discovery.status.up
            assert metric(registry, "epp_discovery_errors_total", resource="inferencemodels") == 0
        assert len(api.requests_to(MODELS)) == 1  # asked once, then left alone


async def test_forbidden_points_at_rbac() -> None:
    async with FakeApiServer() as api:
        recorded_api(api)
        api.collection(PODS).status = 403
        async with discovering(api) as (discovery, _, _registry):

            async def refused() -> bool:
                return "RBAC" in discovery.status.reason

            await wait_until(refused, "the 403 to be reported")
            assert not discovery.status.up


async def test_bearer_token_is_sent_and_reread(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    async with FakeApiServer() as api:
        recorded_api(api)
        async with discovering(api, KubeConnection(api.url, token_path=token)) as (_, members, _registry):
            await members.become("a1", "b2")
            await watching(api, PODS)
            token.write_text("rotated-token")  # projected tokens rotate: read again for every request
            api.collection(PODS).push(CLOSE)
            await watching(api, PODS, 2)
        auth = [r.headers.get("authorization") for r in api.requests_to(PODS)]
        assert auth[0] == "Bearer first-token"
        assert auth[-1] == "Bearer rotated-token"


async def test_pool_deleted_keeps_the_endpoints_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="epp.discovery")
    async with FakeApiServer() as api:
        recorded_api(api)
        async with discovering(api) as (_discovery, members, _):
            await members.become("a1", "b2")
            await watching(api, POOLS)
            pool = fixture("pools-list.json")["items"][0]
            api.collection(POOLS).push({"type": "DELETED", "object": pool})

            async def logged() -> bool:
                return any("qwen-pool not found: keeping the 2" in r.getMessage() for r in caplog.records)

            await wait_until(logged, "the missing-pool warning")
            assert members.names() == {"a1", "b2"}
