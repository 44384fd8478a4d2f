"""Start the front end a variant's workload goes through and yield the OpenAI base URLs to send to."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from bench.compare.picker_metrics import Prediction, scrape_predictions, total_change
from bench.compare.variants import FrontKind, Variant
from bench.epp_process import EppProcess
from bench.peers import PeerRouter

READY_PREFIX = "epp gateway listening on "
# The supervisor's line per worker on stderr with --worker-metrics-port (docs/replicas.md).
WORKER_READY = re.compile(r"worker (\d+) pid \d+ ready: metrics (\S+)")


def worker_metrics_urls(stderr: str, workers: int) -> list[str]:
    """Each worker's /metrics URL from the supervisor's ready lines, in worker order (the latest line of a
    worker wins); RuntimeError when a worker's line is missing."""
    found = {int(m.group(1)): m.group(2).rstrip("/") for m in WORKER_READY.finditer(stderr)}
    missing = [i for i in range(workers) if i not in found]
    if missing:
        raise RuntimeError(f"epp gateway: no metrics address for worker(s) {missing} in: {stderr[-500:]}")
    return [f"{found[i]}/metrics" for i in range(workers)]


@dataclass(frozen=True)
class Frontend:
    """A running front end: the OpenAI base URLs to send to, and the picker's /metrics URL per worker
    (none for peer routers and DIRECT)."""

    base_urls: list[str]
    metrics_urls: list[str] = field(default_factory=list)


class GatewayProcess(EppProcess):
    """`epp gateway` as a subprocess on a free port; `.base_url` is its root URL once it is ready."""

    def __init__(self, args: Sequence[str], startup_timeout: float = 30.0, workers: int = 1) -> None:
        super().__init__("gateway", ["--host", "127.0.0.1", "--port", "0", *args], startup_timeout)
        self.base_url = ""
        self.workers = workers
        self.metrics_urls: list[str] = []

    def _wait_ready(self) -> None:
        line = self.read_until(lambda line: line.startswith(READY_PREFIX))[-1]
        self.base_url = line[len(READY_PREFIX) :].strip().rstrip("/")
        self.wait_http_ok(f"{self.base_url}/healthz")
        if self.workers > 1:
            # The supervisor prints the ready line after every worker's line, so stderr has them all.
            self.metrics_urls = worker_metrics_urls(self.stderr_tail(chars=1_000_000), self.workers)
        else:
            self.metrics_urls = [f"{self.base_url}/metrics"]


# Pods publish KV events on free ports, with a replay socket; the gateway finds them by discovery
# (GET /kv_event_sources, docs/kv-events.md).
KV_EVENTS_CONFIG = (
    '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:*", '
    '"replay_endpoint": "tcp://127.0.0.1:*", "topic": "kv"}'
)


def fleet_kv_args(variant: Variant) -> list[str]:
    """`epp sim` flags the variant needs: KV events when its picker follows them, else none."""
    return ["--kv-events-config", KV_EVENTS_CONFIG] if variant.kv_events else []


def scrape_prediction(frontend: Frontend) -> list[Prediction] | None:
    """The picker's prediction counters on every worker; None without a picker to scrape."""
    return scrape_predictions(frontend.metrics_urls) if frontend.metrics_urls else None


def prediction_change(before: list[Prediction] | None, after: list[Prediction] | None) -> Prediction | None:
    """The change over a run summed over the workers; None without a picker."""
    return None if before is None or after is None else total_change(before, after)


def gateway_args(variant: Variant, pod_urls: Sequence[str], seed: int) -> list[str]:
    """`epp gateway` flags for a variant: the pods as host:port, and its strategy or config file."""
    endpoints = ",".join(url.split("://", 1)[-1] for url in pod_urls)
    args = ["--endpoints", endpoints, "--seed", str(seed), "--log-level", "WARNING"]
    if variant.config is not None:
        args += ["--config", str(variant.config)]
    if variant.strategy is not None:
        args += ["--strategy", variant.strategy]
    if variant.workers > 1:
        args += ["--workers", str(variant.workers), "--worker-metrics-port", "0"]
    return args


@contextlib.contextmanager
def start_frontend(variant: Variant, pod_urls: Sequence[str], seed: int) -> Iterator[Frontend]:
    """Run the variant's front end for the duration of the block; yields where to send and to scrape."""
    if variant.kind is FrontKind.DIRECT:
        yield Frontend([f"{url}/v1" for url in pod_urls])
    elif variant.kind is FrontKind.GATEWAY:
        args = gateway_args(variant, pod_urls, seed)
        with GatewayProcess(args, workers=variant.workers) as gateway:
            yield Frontend([f"{gateway.base_url}/v1"], list(gateway.metrics_urls))
    else:
        assert variant.peer is not None and variant.policy is not None
        with PeerRouter(variant.peer, variant.policy, list(pod_urls)) as router:
            yield Frontend([f"{router.base_url}/v1"])


@contextlib.contextmanager
def open_frontend(variant: Variant, pod_urls: Sequence[str], seed: int) -> Iterator[list[str]]:
    """Run the variant's front end for the duration of the block; yields the base URLs (…/v1) to use."""
    with start_frontend(variant, pod_urls, seed) as frontend:
        yield frontend.base_urls
