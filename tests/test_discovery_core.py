"""Discovery wired into PickerCore: what it finds joins the static endpoints in the datastore."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config import ConfigError, load_config
from epp.core import PickerCore, merge_endpoints
from epp.discovery.options import DiscoveryOptions, WatchSettings
from tests.fake_apiserver import FakeApiServer, fixture
from tests.test_discovery_kubernetes import MODELS, PODS, POOLS
from tests.test_serve_support import wait_until

POOL = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: qwen-pool, namespace: llm}
spec:
  selector: {matchLabels: {app: vllm-qwen}}
  targetPorts: [{number: 8000}]
"""
FAST = WatchSettings(watch_timeout_s=60, backoff_initial_s=0.02, backoff_max_s=0.1, seed=1)


def core_for(tmp_path: Path, discovery: DiscoveryOptions, env: dict[str, str] | None = None) -> PickerCore:
    (tmp_path / "pool.yaml").write_text(POOL)
    config = load_config([tmp_path / "pool.yaml"], {})
    static = merge_endpoints(config, "local=127.0.0.1:8100")
    return PickerCore(config, static, staleness_s=1.0, seed=1, discovery=discovery, env=env or {})


async def test_kubernetes_pods_join_the_static_endpoints(tmp_path: Path) -> None:
    async with FakeApiServer() as api:
        api.collection(POOLS).lists = [fixture("pools-list.json")]
        api.collection(PODS).lists = [fixture("pods-list.json")]
        api.collection(MODELS).lists = [fixture("models-list.json")]
        core = core_for(tmp_path, DiscoveryOptions("kubernetes", kube_api=api.url, watch=FAST))
        assert [e.name for e in core.datastore.endpoints()] == ["local"]
        core.start_scraping(interval_s=0.05, timeout_s=0.05)
        try:

            async def discovered() -> bool:
                names = sorted(e.name for e in core.datastore.endpoints())
                return names == ["local", "vllm-qwen-7d9f8c6b5-a1", "vllm-qwen-7d9f8c6b5-b2"]

            await wait_until(discovered, "the pods in the datastore")
            assert core.discovery is not None and core.discovery.status.up
            # the config's pool named the pods' collection and selector before the apiserver's pool arrived
            assert api.requests_to(PODS)[0].query["labelSelector"] == "app=vllm-qwen"
        finally:
            await core.close()


def test_kubernetes_outside_a_cluster_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        core_for(tmp_path, DiscoveryOptions("kubernetes"), env={})


def test_kubernetes_without_a_pool_needs_its_name(tmp_path: Path) -> None:
    config = load_config([], {})
    with pytest.raises(ConfigError, match="--pool-name"):
        PickerCore(
            config, [], 1.0, 1, discovery=DiscoveryOptions("kubernetes", kube_api="http://127.0.0.1:1")
        )
    core = PickerCore(
        config,
        [],
        1.0,
        1,
        discovery=DiscoveryOptions("kubernetes", kube_api="http://127.0.0.1:1", pool_name="p"),
    )
    assert core.discovery is not None


async def test_file_endpoints_join_the_static_ones_and_lose_name_clashes(tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text("endpoints: [{name: local, address: 10.0.0.9:1}, {name: f, address: 10.0.0.1:8000}]\n")
    core = core_for(tmp_path, DiscoveryOptions("file", path, poll_interval_s=0.02))
    core.start_scraping(interval_s=0.05, timeout_s=0.05)
    try:
        endpoints = {e.name: e.address for e in core.datastore.endpoints()}
        assert endpoints == {"local": "127.0.0.1:8100", "f": "10.0.0.1:8000"}
    finally:
        await core.close()
