"""What the benchmark sends load through: each target, opened over the backend's pods, yields a base URL.

- `direct`: the first backend pod itself (the baseline: no router).
- `epp-gateway`: `epp gateway` (gateway/), one Python process.
- `envoy-epp`: Envoy with epp serve as its ext_proc endpoint picker (epp/envoy_gateway EnvoyStack).
- `envoy-alone`: the same Envoy config without the ext_proc filter (Envoy's least request): Envoy's share.
- `epp-gateway-workers-2`, `envoy-epp-replicas-2`: `epp gateway --workers 2`, Envoy over two epp serve
  replicas (docs/replicas.md); only when named in --targets.
- `sglang-router:POLICY`, `vllm-router:POLICY`: the Rust peer routers (bench/peers.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from bench.compare.frontends import GatewayProcess
from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.overhead.envoy_alone import envoy_alone
from bench.peers import PEER_KINDS, POLICIES, PeerRouter, available_peers


@dataclass(frozen=True)
class Target:
    """A named way to reach the pods: `open(pod_urls)` is a context manager yielding the base URL."""

    name: str
    open: Callable[[list[str]], AbstractContextManager[str]]


def _hostports(urls: list[str]) -> list[str]:
    return [u.removeprefix("http://") for u in urls]


@contextlib.contextmanager
def direct(urls: list[str]) -> Iterator[str]:
    yield urls[0]


@contextlib.contextmanager
def epp_gateway(urls: list[str], strategy: str = "PREFIX_CACHE", workers: int = 1) -> Iterator[str]:
    """`epp gateway` over the pods (bench/compare's GatewayProcess), stopped on exit."""
    args = ["--endpoints", ",".join(_hostports(urls)), "--strategy", strategy, "--log-level", "WARNING"]
    args += ["--workers", str(workers)]
    with GatewayProcess(args) as gateway:
        yield gateway.base_url


@contextlib.contextmanager
def envoy_epp(urls: list[str], strategy: str = "PREFIX_CACHE", replicas: int = 1) -> Iterator[str]:
    """Envoy in front of the pods, asking `epp serve` (ext_proc) for the destination of each request."""
    with EnvoyStack(_hostports(urls), StackOptions(strategy=strategy, replicas=replicas)) as stack:
        yield stack.base_url


def peer(kind: str, policy: str) -> Callable[[list[str]], AbstractContextManager[str]]:
    @contextlib.contextmanager
    def open_peer(urls: list[str]) -> Iterator[str]:
        with PeerRouter(kind, policy, urls) as router:
            yield router.base_url

    return open_peer


def all_targets(strategy: str = "PREFIX_CACHE") -> dict[str, Target]:
    """Every target by name, peers included whether installed or not."""
    targets = {
        "direct": Target("direct", direct),
        "epp-gateway": Target("epp-gateway", lambda urls: epp_gateway(urls, strategy)),
        "envoy-epp": Target("envoy-epp", lambda urls: envoy_epp(urls, strategy)),
        "envoy-alone": Target("envoy-alone", envoy_alone),
        "epp-gateway-workers-2": Target("epp-gateway-workers-2", lambda urls: epp_gateway(urls, strategy, 2)),
        "envoy-epp-replicas-2": Target("envoy-epp-replicas-2", lambda urls: envoy_epp(urls, strategy, 2)),
    }
    for kind in PEER_KINDS:
        for policy in POLICIES:
            name = f"{kind}:{policy}"
            targets[name] = Target(name, peer(kind, policy))
    return targets


def default_target_names() -> list[str]:
    """direct, the epp front ends, and every installed peer with both policies."""
    installed = set(available_peers())
    return [
        name
        for name in all_targets()
        if name not in _ON_REQUEST
        and (name.split(":")[0] not in PEER_KINDS or name.split(":")[0] in installed)
    ]


_ON_REQUEST = frozenset({"epp-gateway-workers-2", "envoy-epp-replicas-2"})  # not in the default run
