"""Envoy alone: the Envoy config of epp/envoy_gateway without its ext_proc filter, so Envoy balances the pods
by least request itself. Measured beside `envoy-epp`, it splits that path's cost into Envoy's and epp's."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.envoy_stack.processes import Child, find_envoy_binary
from epp.envoy_gateway.config import EnvoyConfigOptions, render_config, split_endpoint


def config_without_picker(pods: list[tuple[str, int]]) -> dict[str, Any]:
    """epp's Envoy bootstrap minus the ext_proc filter (the pool cluster falls back to least request)."""
    config = render_config(EnvoyConfigOptions(endpoints=pods, extproc_port=1, listen_port=0))
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                hcm["http_filters"] = [
                    f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"
                ]
    return config


@contextlib.contextmanager
def envoy_alone(urls: list[str], startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Envoy in front of the pods with no endpoint picker; yields its base URL."""
    pods = [split_endpoint(u.removeprefix("http://")) for u in urls]
    with tempfile.TemporaryDirectory(prefix="epp-overhead-envoy-") as workdir:
        config_path = Path(workdir) / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(config_without_picker(pods), sort_keys=False), "utf-8")
        admin_path = Path(workdir) / "admin-address"
        argv = [find_envoy_binary(), "-c", str(config_path), "--admin-address-path", str(admin_path)]
        argv += ["--disable-hot-restart", "--log-level", "warning"]
        envoy = Child("envoy", argv, Path(workdir) / "envoy.log")
        try:
            yield _listener_url(envoy, admin_path, time.monotonic() + startup_timeout_s)
        finally:
            envoy.stop()


def _listener_url(envoy: Child, admin_path: Path, deadline: float) -> str:
    """Wait until Envoy is ready; the base URL of its (only) listener, read from the admin API."""
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while True:
            if not envoy.alive():
                raise envoy.failure("exited during startup")
            if time.monotonic() > deadline:
                raise envoy.failure("did not become ready in time")
            admin = admin_path.read_text().strip() if admin_path.exists() else ""
            if admin:
                try:
                    if client.get(f"http://{admin}/ready").status_code == 200:
                        listeners = client.get(f"http://{admin}/listeners", params={"format": "json"}).json()
                        address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                        return f"http://127.0.0.1:{address['port_value']}"
                except httpx.TransportError:
                    pass
            time.sleep(0.02)
