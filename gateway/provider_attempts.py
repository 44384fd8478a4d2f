"""One provider request's attempts: the chosen target, its VirtualService fallbacks, and outlier detection.

`ProviderHealth` holds one OutlierDetector per provider host that a DestinationRule gives outlierDetection
(each provider host is its own service, as each is its own Envoy cluster under ASM), fed by every attempt.
`ProviderAttempts` implements gateway.forward.Attempts: while the chosen target is ejected the request
starts on the first fallback that is not; an attempt that fails before any byte reached the client is
retried once on the next fallback (`retry_on_fallback`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from epp.config.traffic.config import TrafficConfig
from epp.health.outlier import AttemptResult, OutlierDetector
from epp.scheduling.types import CLIENT_GONE
from epp.traffic.routing import Choice, Target
from gateway.traffic_metrics import NO_ROUTE, TrafficMetrics


class ProviderHealth:
    """Outlier detectors by provider host (created on first use; `clock` is injected for tests)."""

    def __init__(
        self, config: TrafficConfig, metrics: TrafficMetrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._detectors: dict[tuple[str, int], OutlierDetector | None] = {}

    def detector(self, host: str, port: int) -> OutlierDetector | None:
        key = (host, port)
        if key not in self._detectors:
            settings = self._config.upstream(host, port).outlier
            detector = None
            if settings is not None:
                detector = OutlierDetector(settings, self._clock, self._metrics.on_ejection)
                detector.set_hosts([host])
            self._detectors[key] = detector
        return self._detectors[key]

    def is_ejected(self, host: str, port: int) -> bool:
        detector = self.detector(host, port)
        return detector is not None and detector.is_ejected(host)

    def record(self, host: str, port: int, result: AttemptResult) -> None:
        detector = self.detector(host, port)
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
    """gateway.forward.Attempts for a provider request."""

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
        self._retry = retry_on_fallback
        self._port = choice.port
        self._remaining = list(choice.fallbacks)
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
            self._metrics.ttft_of(self.route, self._upstream.name).observe(self.first_token_s)
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
        self._health.record(name, self._port, AttemptResult.from_status(self.status or 200))
        tokens = self._metrics.token_count
        if prompt_tokens:
            tokens(self.route, name, "prompt").inc(prompt_tokens)
        if completion_tokens:
            tokens(self.route, name, "completion").inc(completion_tokens)

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
        self._health.record(name, self._port, kind)
        self._metrics.error_count(self.route, name, error).inc()

    def retry(self, reason: str) -> ProviderUpstream | None:
        """The next fallback (one retry at most), preferring one that is not ejected; None when none."""
        if not self._retry or self.attempts >= 2 or self._open:
            return None
        candidates = [t for t in self._remaining if t.host not in self._tried]
        if not candidates:
            return None
        nxt = next((t for t in candidates if not self._ejected(t)), candidates[0])
        self._remaining.remove(nxt)
        self._count_fallback(self._upstream.target, nxt, "retry")
        self._upstream = ProviderUpstream(nxt)
        return self._upstream

    def close(self) -> None:
        self.fail(CLIENT_GONE)

    def _ejected(self, target: Target) -> bool:
        return target.host is not None and self._health.is_ejected(target.host, self._port)

    def _count_fallback(self, source: Target, to: Target, reason: str) -> None:
        self.fallback_reason = reason
        self._metrics.fallback_count(self.route, str(source.host), str(to.host), reason).inc()
