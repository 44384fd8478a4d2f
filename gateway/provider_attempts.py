"""One provider request's attempts: the chosen target, its VirtualService fallbacks, and outlier detection.

`ProviderHealth` holds one OutlierDetector per service: the provider hosts a route's weights split over
(`Choice.service`; a provider's own host is a service of one), so `maxEjectionPercent` and
`minHealthPercent` act on that set as Envoy's do on a cluster's hosts. Hosts of a service whose
DestinationRules give different outlierDetection settings are separate detectors (one cluster, one
setting); hosts without outlierDetection are never ejected. Each detector is fed by every attempt made in
its service.

`ProviderAttempts` implements gateway.upstream.Attempts: while the chosen target is ejected the request
starts on the first fallback that is not; an attempt that fails before any byte reached the client is
retried on the next fallback, then on the rule's other backends that are not ejected, up to the rule's
`retries` (default 1, or 0 without `retry_on_fallback`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from epp.config.traffic.config import TrafficConfig
from epp.health.outlier import AttemptResult, OutlierDetector
from epp.request_metrics import task_usage
from epp.requestcontrol.lifecycle import FIRST_BYTE_TIMEOUT
from epp.scheduling.types import CLIENT_GONE
from epp.traffic.routing import Choice, Target
from gateway.traffic_metrics import NO_ROUTE, TrafficMetrics

Service = tuple[str, ...]  # provider hosts, sorted


class ProviderHealth:
    """Outlier detectors by service (created on first use; `clock` is injected for tests)."""

    def __init__(
        self, config: TrafficConfig, metrics: TrafficMetrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._by_host: dict[tuple[Service, str, int], OutlierDetector | None] = {}
        self._detectors: dict[tuple[Service, int], OutlierDetector] = {}  # by members and port

    def detector(self, service: Service, host: str, port: int) -> OutlierDetector | None:
        """The detector counting `host` in `service` (addressed on `port`); None without outlierDetection."""
        key = (service, host, port)
        if key not in self._by_host:
            self._by_host[key] = self._build(service, host, port)
        return self._by_host[key]

    def _build(self, service: Service, host: str, port: int) -> OutlierDetector | None:
        settings = self._config.upstream(host, port).outlier
        if settings is None:
            return None
        members = tuple(h for h in service if self._config.upstream(h, port).outlier == settings) or (host,)
        detector = self._detectors.get((members, port))
        if detector is None:
            label = ",".join(members)  # config names only: a bounded label

            def listener(provider: str, ejected: bool, reason: str) -> None:
                self._metrics.on_ejection(provider, ejected, reason, label)

            detector = OutlierDetector(settings, self._clock, listener)
            detector.set_hosts(members)
            self._detectors[(members, port)] = detector
        return detector

    def is_ejected(self, service: Service, host: str, port: int) -> bool:
        detector = self.detector(service, host, port)
        return detector is not None and detector.is_ejected(host)

    def is_ejected_in(self, service: Service, port: int, host: str) -> bool:
        """epp.traffic.routing.EjectedCheck: is_ejected with the router's argument order."""
        return self.is_ejected(service, host, port)

    def record(self, service: Service, host: str, port: int, result: AttemptResult) -> None:
        detector = self.detector(service, host, port)
        if detector is not None:
            detector.record(host, result)


@dataclass(frozen=True, slots=True)
class ProviderUpstream:
    """An attempt's upstream as the forward loop names it (`name`: the provider host)."""

    target: Target

    @property
    def name(self) -> str:
        assert self.target.host is not None
        return self.target.host


class ProviderAttempts:
    """gateway.upstream.Attempts for a provider request."""

    def __init__(
        self,
        choice: Choice,
        health: ProviderHealth,
        metrics: TrafficMetrics,
        arrived: float,
        retry_on_fallback: bool = True,
    ) -> None:
        self.choice = choice
        self.route = choice.route or NO_ROUTE
        self._health = health
        self._metrics = metrics
        self._arrived = arrived
        self._port = choice.port
        self._remaining = list(choice.fallbacks)
        self._siblings = list(choice.siblings)
        default = 1 if retry_on_fallback else 0
        self._budget = default if choice.retries is None else choice.retries
        self._tried: set[str] = set()
        self.attempts = 0
        self.status: int | None = None  # the open (or last) attempt's status
        self.first_token_s: float | None = None
        self.fallback_reason: str | None = None  # "ejected" or "retry" once a fallback served
        target = choice.target
        if self._ejected(target):
            alive = next((t for t in self._remaining if not self._ejected(t)), None)
            if alive is not None:  # all out: try the target anyway (better than "no healthy upstream")
                self._count_fallback(target, alive, "ejected")
                self._remaining.remove(alive)
                target = alive
        self._upstream = ProviderUpstream(target)
        self._open = False

    @property
    def endpoint(self) -> ProviderUpstream:
        return self._upstream

    @property
    def target(self) -> Target:
        return self._upstream.target

    def send(self) -> ProviderUpstream:
        self.attempts += 1
        self._open = True
        self.status = None
        self._tried.add(self._upstream.name)
        return self._upstream

    def response_started(self, status: int) -> None:
        self.status = status

    def first_token(self) -> float:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self._arrived
        return self.first_token_s

    def complete(
        self,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cached_prompt_tokens: int | None = None,
    ) -> None:
        if not self._open:
            return
        self._open = False
        name = self._upstream.name
        self._record(name, AttemptResult.from_status(self.status or 200))
        counts = task_usage()  # the provider's usage, kept for the record step (gen_ai_* metrics)
        if prompt_tokens:
            counts.prompt = prompt_tokens
        if completion_tokens:
            counts.completion = completion_tokens

    def fail(self, error: str, status: int | None = None) -> None:
        if not self._open:
            return
        self._open = False
        if error == CLIENT_GONE:
            return
        name = self._upstream.name
        if status is not None:
            self.status = status
        kind = AttemptResult.from_status(status) if status is not None else AttemptResult.GATEWAY_ERROR
        self._record(name, kind)
        self._metrics.error_count(self.route, name, error).inc()

    def retry(self, reason: str) -> ProviderUpstream | None:
        """The next upstream within the retry budget, or None.

        A fallback not yet tried (preferring one that is not ejected, else the first), then the rule's other
        backends that are not ejected (an ejected sibling is what the draw avoided).
        """
        if self.attempts > self._budget or self._open:
            return None
        candidates = [t for t in self._remaining if t.host not in self._tried]
        pool = self._remaining
        nxt = next((t for t in candidates if not self._ejected(t)), candidates[0] if candidates else None)
        if nxt is None:
            pool = self._siblings
            nxt = next((t for t in pool if t.host not in self._tried and not self._ejected(t)), None)
            if nxt is None:
                return None
        pool.remove(nxt)
        self._count_fallback(self._upstream.target, nxt, "retry")
        self._upstream = ProviderUpstream(nxt)
        return self._upstream

    def timed_out(self) -> None:
        """The route's deadline passed with an attempt open: a timeout, as outlier detection sees it."""
        self.fail(FIRST_BYTE_TIMEOUT)

    def close(self) -> None:
        self.fail(CLIENT_GONE)

    def _ejected(self, target: Target) -> bool:
        host = target.host
        return host is not None and self._health.is_ejected(self.choice.service_of(host), host, self._port)

    def _record(self, host: str, result: AttemptResult) -> None:
        self._health.record(self.choice.service_of(host), host, self._port, result)

    def _count_fallback(self, source: Target, to: Target, reason: str) -> None:
        self.fallback_reason = reason
        self._metrics.fallback_count(self.route, str(source.host), str(to.host), reason).inc()
