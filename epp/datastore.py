"""The pool's endpoints, their latest scraped metrics, their health and the requests epp has in flight.

One `Datastore` is created per process and passed to whoever needs it (scraper, scheduler, servers). Which
endpoints may be picked is decided by their `HealthState` (epp.health.endpoint_health).

Between scrapes, `EndpointState.metrics` is bridged by epp's own accounting: the requests epp sent to a pod,
or saw finish, since its last scrape are added to or taken from the scraped running/waiting counts, so a burst
onto one pod is seen by the next pick rather than by the next scrape (docs/scraping.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum

from epp.health.endpoint_health import ROUTABLE, EndpointHealth, HealthState, classify
from epp.health.outlier import OutlierDetector


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A model-server pod: a stable name and where to reach it.

    `labels` (sorted `(key, value)` pairs, from discovery) are not part of the identity: a label-only change
    keeps the endpoint's metrics, health and in-flight count.
    """

    name: str
    host: str
    port: int
    labels: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    address: str = field(init=False, compare=False, repr=False)
    """`host:port`, the value of `x-gateway-destination-endpoint` (read on every request: built once)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", f"{self.host}:{self.port}")

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What one scrape of a vLLM pod's /metrics told us, in the units a scheduler wants."""

    waiting: int
    running: int
    kv_cache_usage: float  # fraction 0..1
    running_loras: frozenset[str] = frozenset()
    waiting_loras: frozenset[str] = frozenset()
    max_lora: int | None = None
    block_size: int | None = None  # tokens per KV block
    num_gpu_blocks: int | None = None
    process_start_time: float | None = None  # changes when the pod restarts
    prefix_cache_queries: float | None = None  # counter; a drop also means a restart
    # Counters for the prefill rate (scorers/prefill_scrape_rate.py); None when the pod does not export them.
    prompt_tokens: float | None = None  # vllm:prompt_tokens_total (cached tokens included)
    prefix_cache_hits: float | None = None  # vllm:prefix_cache_hits_total, in tokens
    prefill_time_s: float | None = None  # vllm:request_prefill_time_seconds_sum
    prefill_count: float | None = None  # vllm:request_prefill_time_seconds_count
    scraped_at: float = 0.0  # time.monotonic() of the scrape

    @property
    def kv_capacity_tokens(self) -> int | None:
        if self.block_size and self.num_gpu_blocks:
            return self.block_size * self.num_gpu_blocks
        return None

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.scraped_at


class EndpointEvent(Enum):
    ADDED = "added"
    REMOVED = "removed"
    RESTARTED = "restarted"


EndpointListener = Callable[[EndpointEvent, Endpoint], None]


@dataclass(slots=True)
class EndpointState:
    """Mutable per-endpoint state owned by the datastore.

    `metrics` is what pickers see: `scraped` (the pod's last answer) bridged by `in_flight` minus
    `in_flight_at_scrape`, epp's sends and finishes since that scrape.
    """

    endpoint: Endpoint
    metrics: MetricsSnapshot | None = None
    in_flight: int = 0
    health: EndpointHealth = field(default_factory=EndpointHealth)
    listeners: list[EndpointListener] = field(default_factory=list, repr=False)
    scraped: MetricsSnapshot | None = None
    in_flight_at_scrape: int = 0
    # `scraped` bridged by each in-flight change seen since that scrape: a request's send and finish move
    # the count back and forth, so the same few snapshots recur (and keep their identity, which the
    # scheduler's candidate reuse keys on).
    _bridged: dict[int, MetricsSnapshot] = field(default_factory=dict, repr=False)

    def bridge(self) -> None:
        """Recompute `metrics` from the last scrape and epp's in-flight change since."""
        scraped = self.scraped
        if scraped is None:
            return
        delta = self.in_flight - self.in_flight_at_scrape
        found = self._bridged.get(delta)
        if found is None:
            found = self._bridged[delta] = bridged(scraped, delta)
        self.metrics = found

    def scraped_now(self, snapshot: MetricsSnapshot) -> None:
        """The pod's own answer replaces the bridged estimate."""
        self.metrics = self.scraped = snapshot
        self.in_flight_at_scrape = self.in_flight
        self._bridged.clear()


class Datastore:
    """Endpoints of one pool. Not thread-safe: used from one asyncio loop."""

    def __init__(
        self,
        staleness_s: float = 1.0,
        outlier: OutlierDetector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`outlier` says which endpoints are ejected (default: none ever is)."""
        self.staleness_s = staleness_s
        self.outlier = outlier
        self.clock = clock
        self._states: dict[str, EndpointState] = {}
        self._listeners: list[EndpointListener] = []
        self._send_listeners: list[Callable[[str], None]] = []

    # -- membership -------------------------------------------------------
    def subscribe(self, listener: EndpointListener) -> None:
        """Call `listener` when an endpoint is added, removed or restarts."""
        self._listeners.append(listener)

    def subscribe_sends(self, listener: Callable[[str], None]) -> None:
        """Call `listener(name)` whenever a request is sent to endpoint `name` (the scraper's wake-up)."""
        self._send_listeners.append(listener)

    def unsubscribe_sends(self, listener: Callable[[str], None]) -> None:
        if listener in self._send_listeners:
            self._send_listeners.remove(listener)

    def _emit(self, event: EndpointEvent, endpoint: Endpoint) -> None:
        for listener in self._listeners:
            listener(event, endpoint)

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the membership; state of endpoints that stay is kept."""
        wanted = {e.name: e for e in endpoints}
        for name in list(self._states):
            old = self._states[name].endpoint
            if name not in wanted or wanted[name] != old:
                del self._states[name]
                self._emit(EndpointEvent.REMOVED, old)
        for name, endpoint in wanted.items():
            if name not in self._states:
                self._states[name] = EndpointState(endpoint)
                self._emit(EndpointEvent.ADDED, endpoint)
            elif self._states[name].endpoint.labels != endpoint.labels:
                self._states[name].endpoint = endpoint  # relabelled: same pod, same state

    def endpoints(self) -> list[Endpoint]:
        return [s.endpoint for s in self._states.values()]

    def get(self, name: str) -> EndpointState | None:
        return self._states.get(name)

    def find_by_address(self, address: str) -> EndpointState | None:
        """The endpoint at `host:port`, if it is in the pool."""
        for state in self._states.values():
            if state.endpoint.address == address:
                return state
        return None

    def states(self) -> list[EndpointState]:
        return list(self._states.values())

    # -- scraping and health ------------------------------------------------
    def update_metrics(self, name: str, snapshot: MetricsSnapshot) -> None:
        """Record a successful scrape; detects restarts from the start time or a counter reset."""
        state = self._states.get(name)
        if state is None:
            return
        prev = state.metrics
        if prev is not None and restarted(prev, snapshot):
            state.health.restarts += 1
            self._emit(EndpointEvent.RESTARTED, state.endpoint)
        state.scraped_now(snapshot)
        state.health.scrape_succeeded(self.clock())

    def record_scrape_failure(self, name: str, error: str, timed_out: bool = False) -> None:
        """A scrape failed; `timed_out` tells a slow pod from one that could not be reached at all."""
        state = self._states.get(name)
        if state is not None:
            state.health.scrape_failed(error, timed_out, self.clock())

    def mark_unreachable(self, name: str, reason: str) -> None:
        """The proxy could not reach `name` (refused, reset): out until its back-off and a good scrape."""
        state = self._states.get(name)
        if state is not None:
            state.health.mark_unreachable(f"proxy: {reason}", self.clock())

    def record_success(self, name: str) -> None:
        """A request to `name` got an answer: its unreachable back-off starts from scratch next time."""
        state = self._states.get(name)
        if state is not None:
            state.health.request_succeeded()

    def health_state(self, state: EndpointState, now: float | None = None) -> HealthState:
        age = None if state.metrics is None else state.metrics.age(self.clock() if now is None else now)
        ejected = self.outlier is not None and self.outlier.is_ejected(state.endpoint.name)
        return classify(state.health, age, self.staleness_s, ejected)

    def is_schedulable(self, state: EndpointState, now: float | None = None) -> bool:
        """Healthy, or slow with metrics still inside the staleness bound."""
        return self.health_state(state, now) in ROUTABLE

    def schedulable(self, now: float | None = None) -> list[EndpointState]:
        """Routable endpoints; when none is, those that were scraped before and are only slow or stale.

        The fallback is like Envoy's panic mode: when every pod is so loaded that its /metrics answers late,
        routing on the last metrics serves requests that a 503 would lose. A pod that is unreachable or
        ejected is never in it.
        """
        now = self.clock() if now is None else now
        # The per-decision hot path: the same rules as `health_state`, with the ejected set asked once.
        ejected = self.outlier.ejected_hosts() if self.outlier is not None else ()
        staleness = self.staleness_s
        fresh: list[EndpointState] = []
        stale: list[EndpointState] = []
        for s in self._states.values():
            m = s.metrics
            if m is None or s.health.unreachable_reason is not None:
                continue
            if ejected and s.endpoint.name in ejected:
                continue
            (fresh if now - m.scraped_at <= staleness else stale).append(s)
        return fresh or stale

    def reports_adapter(self, name: str) -> bool:
        """Whether any pod's last scrape shows LoRA adapter `name` running or waiting."""
        for state in self._states.values():
            m = state.metrics
            if m is not None and (name in m.running_loras or name in m.waiting_loras):
                return True
        return False

    # -- in-flight accounting ----------------------------------------------
    def acquire(self, name: str) -> None:
        """A request was sent to `name`."""
        state = self._states.get(name)
        if state is not None:
            state.in_flight += 1
            state.bridge()
            for listener in self._send_listeners:
                listener(name)

    def release(self, name: str) -> None:
        """A request to `name` finished (in any way)."""
        state = self._states.get(name)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1
            state.bridge()


def bridged(scraped: MetricsSnapshot, delta: int) -> MetricsSnapshot:
    """`scraped` with `delta` requests more (or fewer) on the pod, as its scheduler would place them.

    New requests queue behind a pod that already queues and run on one that does not; a finished request
    frees a slot that a waiting one takes, so finishes leave the queue first. The pod's own scrape replaces
    the guess within one scrape interval.
    """
    if delta == 0:
        return scraped
    waiting, running = scraped.waiting, scraped.running
    if delta > 0:
        if waiting > 0:
            waiting += delta
        else:
            running += delta
    else:
        taken = min(waiting, -delta)
        waiting -= taken
        running = max(0, running - (-delta - taken))
    return replace(scraped, waiting=waiting, running=running)


def restarted(prev: MetricsSnapshot, cur: MetricsSnapshot) -> bool:
    """The pod restarted between two scrapes: a new start time, or its prefix-cache queries went back."""
    if (
        prev.process_start_time is not None
        and cur.process_start_time is not None
        and cur.process_start_time != prev.process_start_time
    ):
        return True
    return (
        prev.prefix_cache_queries is not None
        and cur.prefix_cache_queries is not None
        and cur.prefix_cache_queries < prev.prefix_cache_queries
    )
