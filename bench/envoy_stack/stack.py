"""`EnvoyStack`: `epp serve` plus a real Envoy in front of one pool, for `epp envoy up`, tests and benchmarks.

    with EnvoyStack(["127.0.0.1:8100", "127.0.0.1:8101"]) as stack:
        httpx.post(f"{stack.base_url}/v1/completions", json=...)

epp serve starts first (ext_proc gRPC port and HTTP port read from its startup line), then Envoy with the
rendered config; both run in their own process group and are stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from bench.envoy_stack.processes import Child, StackError, find_envoy_binary
from epp import limits
from epp.envoy_gateway.config import EnvoyConfigOptions, ResolvedPool, render_yaml
from epp.envoy_gateway.config import resolve_pool as resolve_pool_config
from epp.envoy_gateway.replicas import ExtProcReplica
from epp.routes import AllowedRoutes
from epp.traffic.resolve import parse_overrides

_SERVE_READY = re.compile(r"epp serving: ext_proc grpc [^ ]+:(\d+), http [^ ]+:(\d+)")


@dataclass
class StackOptions:
    """What `epp envoy up` was asked for; ports 0 pick free ports."""

    endpoints: str | None = None  # "host:port,..." added to the config's StaticEndpoints
    config_paths: Sequence[str] = ()
    strategy: str | None = None
    host: str = "127.0.0.1"
    port: int = 0  # Envoy's listener
    grpc_port: int = 0  # epp's ext_proc server
    fail_open: bool | None = None  # None: the pool's extensionRef.failureMode (FailOpen), else fail closed
    fallback_endpoints: int = 2  # extra addresses epp lists for Envoy's retries
    num_retries: int = 2
    upstream_idle_timeout_s: float = 300.0  # Envoy's per-try idle timeout: a silent pod fails the attempt
    envoy_concurrency: int | None = None  # Envoy worker threads (default: one per core)
    envoy_log_level: str = "warning"
    wait_for_pods: bool = True  # start() also waits for epp's /readyz (a pod scraped), not only for startup
    serve_args: Sequence[str] = field(default_factory=tuple)  # more `epp serve` flags, e.g. ("--seed", "1")
    serve_env: Mapping[str, str] = field(default_factory=dict)  # added to `epp serve`'s environment
    startup_timeout_s: float = 30.0
    # What a client may send (epp/limits.py defaults; `epp serve` gets the same body limit).
    allowed_routes: AllowedRoutes = field(default_factory=AllowedRoutes)
    max_body_bytes: int = limits.DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = limits.DEFAULT_MAX_HEADER_BYTES
    max_headers: int = limits.DEFAULT_MAX_HEADERS
    header_timeout_s: float = limits.DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = limits.DEFAULT_BODY_TIMEOUT_S
    idle_timeout_s: float = limits.DEFAULT_IDLE_TIMEOUT_S
    stream_idle_timeout_s: float | None = None  # None: every attempt's upstream idle timeout + 10 s
    message_timeout_s: float = 5.0  # Envoy's wait for one ext_proc answer
    resolve: Sequence[str] = ()  # provider overrides "host:port=addr:port" (curl --resolve style)
    upstream_ca_file: str | None = None  # CA bundle for providers without their own caFile
    # `epp serve` processes behind Envoy's ext_proc cluster (epp/envoy_gateway/replicas.py); with more than
    # one, each takes free ports (grpc_port is then ignored) and Envoy health-checks their /readyz.
    replicas: int = 1
    health_check_interval_s: float = 1.0


def resolve_pool(options: StackOptions) -> ResolvedPool:
    """The pool's pods and failure mode for these options (epp.envoy_gateway.config.resolve_pool)."""
    return resolve_pool_config(options.config_paths, options.endpoints, options.strategy, options.fail_open)


class EnvoyStack:
    """epp serve + Envoy for one pool. `base_url` is Envoy's listener (OpenAI API under /v1)."""

    def __init__(
        self, endpoints: Sequence[str] | str | None = None, options: StackOptions | None = None
    ) -> None:
        opts = options or StackOptions()
        if endpoints is not None:
            text = endpoints if isinstance(endpoints, str) else ",".join(endpoints)
            opts = StackOptions(**{**opts.__dict__, "endpoints": text})
        self.options = opts
        self.pool = ResolvedPool([], False)
        self.epp: Child | None = None  # the first replica
        self.epps: list[Child] = []  # every replica, in order
        self.replica_ports: list[tuple[int, int]] = []  # (ext_proc gRPC, HTTP) per replica
        self.envoy: Child | None = None
        self.grpc_port = 0
        self.epp_http_port = 0
        self.port = 0
        self.admin_url = ""
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.options.host)}:{self.port}"

    @property
    def epp_url(self) -> str:
        """epp serve's HTTP side (/metrics, /readyz, /pick); the first replica's."""
        return f"http://127.0.0.1:{self.epp_http_port}"

    @property
    def epp_urls(self) -> list[str]:
        """Every replica's HTTP side, in order."""
        return [f"http://127.0.0.1:{http}" for _, http in self.replica_ports]

    def start(self) -> None:
        self.pool = resolve_pool(self.options)
        self._dir = tempfile.TemporaryDirectory(prefix="epp-envoy-")
        try:
            deadline = time.monotonic() + self.options.startup_timeout_s
            self._start_epp(deadline)
            self._start_envoy(deadline)
            if self.options.wait_for_pods:
                self._wait_epp_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def _start_epp(self, deadline: float) -> None:
        count = self.options.replicas
        for index in range(count):
            name, log = (
                ("epp serve", "epp-serve.log") if count == 1 else (f"epp serve {index}", f"epp-{index}.log")
            )
            child = Child(name, self._serve_argv(count == 1), self._path(log), self._serve_env())
            self.epps.append(child)
        for child in self.epps:  # started together, waited for in turn
            found = child.wait_for_log(_SERVE_READY, deadline)
            self.replica_ports.append((int(found.group(1)), int(found.group(2))))
        self.epp = self.epps[0]
        self.grpc_port, self.epp_http_port = self.replica_ports[0]

    def _serve_env(self) -> dict[str, str]:
        return {**os.environ, **self.options.serve_env, "PYTHONUNBUFFERED": "1"}

    def _serve_argv(self, fixed_port: bool) -> list[str]:
        opts = self.options
        argv = [sys.executable, "-m", "epp.cli", "serve", "--host", "127.0.0.1"]
        argv += ["--grpc-port", str(opts.grpc_port if fixed_port else 0), "--http-port", "0"]
        argv += ["--fallback-endpoints", str(opts.fallback_endpoints)]
        argv += ["--max-body-bytes", str(opts.max_body_bytes)]
        for path in opts.config_paths:
            argv += ["--config", str(path)]
        if opts.endpoints:
            argv += ["--endpoints", opts.endpoints]
        if opts.strategy:
            argv += ["--strategy", opts.strategy]
        argv += list(opts.serve_args)
        return argv

    def _start_envoy(self, deadline: float) -> None:
        opts = self.options
        config = EnvoyConfigOptions(
            endpoints=self.pool.endpoints,
            extproc_port=self.grpc_port,
            listen_host=opts.host,
            listen_port=opts.port,
            fail_open=self.pool.fail_open,
            num_retries=opts.num_retries,
            upstream_idle_timeout_s=opts.upstream_idle_timeout_s,
            message_timeout_s=opts.message_timeout_s,
            allowed_routes=opts.allowed_routes,
            max_body_bytes=opts.max_body_bytes,
            max_header_bytes=opts.max_header_bytes,
            max_headers=opts.max_headers,
            header_timeout_s=opts.header_timeout_s,
            body_timeout_s=opts.body_timeout_s,
            idle_timeout_s=opts.idle_timeout_s,
            stream_idle_timeout_s=opts.stream_idle_timeout_s,
            traffic=self.pool.traffic,
            resolve=parse_overrides(opts.resolve),
            upstream_ca_file=opts.upstream_ca_file,
            extproc_replicas=tuple(
                ExtProcReplica("127.0.0.1", grpc, http) for grpc, http in self.replica_ports
            )
            if opts.replicas > 1
            else (),
            health_check_interval_s=opts.health_check_interval_s,
        )
        config_path = self._path("envoy.yaml")
        config_path.write_text(render_yaml(config), "utf-8")
        admin_path = self._path("admin-address")
        argv = [find_envoy_binary(), "-c", str(config_path), "--admin-address-path", str(admin_path)]
        argv += ["--disable-hot-restart", "--log-level", opts.envoy_log_level]
        if opts.envoy_concurrency:
            argv += ["--concurrency", str(opts.envoy_concurrency)]
        self.envoy = Child("envoy", argv, self._path("envoy.log"))
        envoy = self.envoy
        while not (admin_path.exists() and admin_path.read_text().strip()):
            if not envoy.alive():
                raise envoy.failure("exited during startup")
            if time.monotonic() > deadline:
                raise envoy.failure("did not write its admin address in time")
            time.sleep(0.02)
        self.admin_url = f"http://{admin_path.read_text().strip()}"
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while True:
                try:
                    if client.get(f"{self.admin_url}/ready").status_code == 200:
                        listeners = client.get(
                            f"{self.admin_url}/listeners", params={"format": "json"}
                        ).json()
                        break
                except httpx.TransportError:
                    pass
                if not envoy.alive():
                    raise envoy.failure("exited during startup")
                if time.monotonic() > deadline:
                    raise envoy.failure("did not become ready in time")
                time.sleep(0.02)
        address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        self.port = int(address["port_value"])

    def _wait_epp_ready(self, deadline: float) -> None:
        for child, url in zip(self.epps, self.epp_urls, strict=True):
            self._wait_ready(child, url, deadline)

    def _wait_ready(self, child: Child, url: str, deadline: float) -> None:
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while True:
                try:
                    if client.get(f"{url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if not child.alive():
                    raise child.failure("exited during startup")
                if time.monotonic() > deadline:
                    raise StackError(
                        f"no pod of {self.options.endpoints or 'the pool'} became schedulable in time"
                    )
                time.sleep(0.02)

    def _path(self, name: str) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / name

    def failed_child(self) -> Child | None:
        """The first process of the stack that is no longer running, if any."""
        for child in (*self.epps, self.envoy):
            if child is not None and not child.alive():
                return child
        return None

    def stop(self) -> None:
        """Stop Envoy first (no new requests reach epp), then epp."""
        for child in (self.envoy, *self.epps):
            if child is not None:
                child.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EnvoyStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


__all__ = ["EnvoyStack", "ResolvedPool", "StackError", "StackOptions", "resolve_pool"]
