"""Start the front end a variant's workload goes through and yield the OpenAI base URLs to send to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from bench.compare.variants import FrontKind, Variant
from bench.epp_process import EppProcess
from bench.peers import PeerRouter

READY_PREFIX = "epp gateway listening on "


class GatewayProcess(EppProcess):
    """`epp gateway` as a subprocess on a free port; `.base_url` is its root URL once it is ready."""

    def __init__(self, args: Sequence[str], startup_timeout: float = 30.0) -> None:
        super().__init__("gateway", ["--host", "127.0.0.1", "--port", "0", *args], startup_timeout)
        self.base_url = ""

    def _wait_ready(self) -> None:
        line = self.read_until(lambda line: line.startswith(READY_PREFIX))[-1]
        self.base_url = line[len(READY_PREFIX) :].strip().rstrip("/")
        self.wait_http_ok(f"{self.base_url}/healthz")


def gateway_args(variant: Variant, pod_urls: Sequence[str], seed: int) -> list[str]:
    """`epp gateway` flags for a variant: the pods as host:port, and its strategy or config file."""
    endpoints = ",".join(url.split("://", 1)[-1] for url in pod_urls)
    args = ["--endpoints", endpoints, "--seed", str(seed), "--log-level", "WARNING"]
    if variant.config is not None:
        args += ["--config", str(variant.config)]
    if variant.strategy is not None:
        args += ["--strategy", variant.strategy]
    return args


@contextlib.contextmanager
def open_frontend(variant: Variant, pod_urls: Sequence[str], seed: int) -> Iterator[list[str]]:
    """Run the variant's front end for the duration of the block; yields the base URLs (…/v1) to use."""
    if variant.kind is FrontKind.DIRECT:
        yield [f"{url}/v1" for url in pod_urls]
    elif variant.kind is FrontKind.GATEWAY:
        with GatewayProcess(gateway_args(variant, pod_urls, seed)) as gateway:
            yield [f"{gateway.base_url}/v1"]
    else:
        assert variant.peer is not None and variant.policy is not None
        with PeerRouter(variant.peer, variant.policy, list(pod_urls)) as router:
            yield [f"{router.base_url}/v1"]
