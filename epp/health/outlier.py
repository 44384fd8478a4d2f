"""Consecutive-error outlier detection with Envoy's semantics, driven by an injectable clock.

Sources: [arch] Envoy docs, architecture overview "Outlier detection"; [proto] Envoy API docs,
``config.cluster.v3.OutlierDetection``; [impl] Envoy ``source/common/upstream/outlier_detection_impl.cc``
(``putHttpResponseCode``, ``ejectHost``, ``onConsecutiveErrorWorker``, ``checkHostForUneject``,
``onIntervalTimer``); [lb] Envoy ``LoadBalancerBase::isHostSetInPanic``; [istio] Istio API reference,
DestinationRule ``OutlierDetection``, and istiod's ``applyOutlierDetection``.

Rules implemented (``split_external_local_origin_errors`` = false, every ``enforcing_*`` = 100%):

1. Counting [arch, impl]. Locally originated failures are mapped to gateway codes (timeout -> 504,
   connect failure -> 503), so ``GATEWAY_ERROR`` advances both counters. A 5xx that is not
   502/503/504 advances the 5xx counter and *resets* the gateway counter. A non-5xx resets both.
2. Inline ejection [arch, impl]. An ejection is attempted on the response that brings a counter to
   exactly its threshold, not at a sweep; a threshold of 0 never fires ([istio]: 0 disables). The
   gateway counter is checked first, so a 502/503/504 that completes both is a gateway ejection. After
   an attempt, ejected or refused, only the triggering counter resets; an already ejected host is not
   re-attempted and its counters keep counting until it returns.
3. max_ejection_percent [impl; Envoy PRs 27624, 27909, 34796]. An ejection is allowed when
   ``100 * (ejected + 1) <= max% * hosts``, and the first one is always allowed (when max% > 0). Current
   Envoy grants the first ejection only with ``always_eject_one_host``; before PR 27909 it always did.
4. Duration [arch, impl]. Each ejection bumps the multiplier while ``multiplier * base < max + base``;
   the host stays out for ``min(base * multiplier, max_ejection_time)`` ([proto]: max defaults to 300s).
5. Return [arch, impl]. A host returns at the first sweep at/after its ejection time has elapsed, and
   its counters reset then. Sweeps run at t0 + k*interval, t0 being construction time.
6. Multiplier decay [arch, impl]. At each sweep, a host that is not ejected and returned at least one
   interval ago has its multiplier decremented (not below 0).
7. minHealthPercent [istio, lb]. istiod writes it as Envoy's ``healthy_panic_threshold``: while
   ``100 * non_ejected / hosts < min%`` every host is routable. Ejection records are kept and ejection
   goes on; only the effective view (``is_ejected``, ``ejected_hosts``) ignores them.
8. Membership [impl]. New hosts start clean; a removed host forgets its state, multiplier included.

Not implemented: success-rate and failure-percentage detection, split local/external mode, ejection
jitter (Envoy's default is 0), un-ejection by active health checks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)

EjectionListener = Callable[[str, bool, str], None]

# Sweep times are t0 + k*interval in floats; this keeps rounding from delaying a return by an interval.
_EPS = 1e-9


class AttemptResult(Enum):
    """The outcome of one attempt against a host, as outlier detection sees it."""

    SUCCESS = "success"
    HTTP_5XX = "5xx"
    GATEWAY_ERROR = "gateway_error"

    @classmethod
    def from_status(cls, status: int) -> AttemptResult:
        """502/503/504 -> GATEWAY_ERROR, other 5xx -> HTTP_5XX, anything else -> SUCCESS."""
        if status in (502, 503, 504):
            return cls.GATEWAY_ERROR
        if 500 <= status <= 599:
            return cls.HTTP_5XX
        return cls.SUCCESS


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _check_real(name: str, value: object, low: float, high: float | None, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if (v <= low if low_open else v < low) or (high is not None and v > high):
        bound = f"> {low:g}" if low_open else f"between {low:g} and {high:g}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return v


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    """Thresholds and timings; defaults are Istio's (and Envoy's 300 s max ejection time)."""

    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 0
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_time_s: float = 300.0
    max_ejection_percent: float = 10.0
    min_health_percent: float = 0.0

    def __post_init__(self) -> None:
        _check_count("consecutive_5xx", self.consecutive_5xx)
        _check_count("consecutive_gateway_errors", self.consecutive_gateway_errors)
        for name in ("interval_s", "base_ejection_time_s", "max_ejection_time_s"):
            _check_real(name, getattr(self, name), 0.0, None, low_open=True)
        for name in ("max_ejection_percent", "min_health_percent"):
            _check_real(name, getattr(self, name), 0.0, 100.0, low_open=False)
        if self.max_ejection_time_s < self.base_ejection_time_s:  # Envoy rejects this config too
            raise ValueError(
                f"max_ejection_time_s ({self.max_ejection_time_s:g}) must be >= "
                f"base_ejection_time_s ({self.base_ejection_time_s:g})"
            )


@dataclass(frozen=True, slots=True)
class HostOutlierState:
    """A read-only snapshot of one host's detector state."""

    consecutive_5xx: int
    consecutive_gateway_errors: int
    times_ejected: int
    ejected: bool
    ejected_until: float | None
    ejections_total: int


class _Host:
    __slots__ = ("backoff", "c5xx", "cgw", "ejected", "ejected_at", "total")

    def __init__(self) -> None:
        self.c5xx = 0
        self.cgw = 0
        self.backoff = 0  # Envoy's ejectTimeBackoff: the ejection-time multiplier
        self.ejected = False
        self.ejected_at = 0.0
        self.total = 0


class OutlierDetector:
    """Tracks hosts (plain strings) and ejects the ones that fail consecutively. Not thread-safe."""

    def __init__(
        self,
        settings: OutlierSettings = OutlierSettings(),  # frozen, so sharing the default is safe
        clock: Callable[[], float] = time.monotonic,
        listener: EjectionListener | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._listener = listener
        self._hosts: dict[str, _Host] = {}
        self._ejected = 0
        self._t0 = clock()
        self._next_sweep = 1

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """Replace the membership; removed hosts forget their state, new ones start clean."""
        self._run_due(self._clock())
        wanted = dict.fromkeys(hosts)  # keeps the caller's order, so sweeps and events are deterministic
        for name in [h for h in self._hosts if h not in wanted]:
            if self._hosts.pop(name).ejected:
                self._ejected -= 1
                self._notify(name, False, "removed")
        for name in wanted:
            if name not in self._hosts:
                self._hosts[name] = _Host()

    def record(self, host: str, result: AttemptResult) -> bool:
        """Count one attempt's result; True when this call ejected the host. Unknown hosts are ignored."""
        now = self._clock()
        self._run_due(now)
        st = self._hosts.get(host)
        if st is None:
            return False
        if result is AttemptResult.SUCCESS:
            st.c5xx = st.cgw = 0
            return False
        s = self.settings
        triggers: list[str] = []
        if result is AttemptResult.GATEWAY_ERROR:
            st.cgw += 1
            if st.cgw == s.consecutive_gateway_errors:  # 0 never matches: disabled
                triggers.append("consecutive_gateway_errors")
        else:
            st.cgw = 0  # a non-gateway 5xx breaks the gateway streak (Envoy)
        st.c5xx += 1
        if st.c5xx == s.consecutive_5xx:
            triggers.append("consecutive_5xx")
        for reason in triggers:
            if st.ejected:
                break  # Envoy ignores detections for an ejected host and leaves its counters alone
            ejected = self._try_eject(host, st, now, reason)
            if reason == "consecutive_5xx":
                st.c5xx = 0
            else:
                st.cgw = 0
            if ejected:
                return True
        return False

    def _try_eject(self, host: str, st: _Host, now: float, reason: str) -> bool:
        s = self.settings
        n = len(self._hosts)
        within = 100 * (self._ejected + 1) <= s.max_ejection_percent * n
        if s.max_ejection_percent <= 0 or not (within or self._ejected == 0):
            log.debug("outlier: not ejecting %s (%s): max_ejection_percent reached", host, reason)
            return False
        st.ejected = True
        st.ejected_at = now
        st.total += 1
        if st.backoff * s.base_ejection_time_s < s.max_ejection_time_s + s.base_ejection_time_s:
            st.backoff += 1
        self._ejected += 1
        self._notify(host, True, reason)
        return True

    def is_ejected(self, host: str) -> bool:
        """Effective ejection: False for every host while min_health_percent puts the pool in panic."""
        if not self._ejected:  # the common case; sweeps due meanwhile only decay multipliers, done later
            return False
        self._run_due(self._clock())
        st = self._hosts.get(host)
        return st is not None and st.ejected and not self._in_panic()

    def ejected_hosts(self) -> list[str]:
        """The effective ejected set (empty in panic), sorted."""
        if not self._ejected:  # the common case, once per scheduling decision (see is_ejected)
            return []
        self._run_due(self._clock())
        if not self._ejected or self._in_panic():
            return []
        return sorted(h for h, st in self._hosts.items() if st.ejected)

    def panic(self) -> bool:
        """True while the share of non-ejected hosts is below min_health_percent."""
        self._run_due(self._clock())
        return self._in_panic()

    def state(self, host: str) -> HostOutlierState | None:
        """A snapshot of the host's raw state (ignores panic); None for an unknown host."""
        self._run_due(self._clock())
        st = self._hosts.get(host)
        if st is None:
            return None
        until = st.ejected_at + self._duration(st) if st.ejected else None
        return HostOutlierState(st.c5xx, st.cgw, st.backoff, st.ejected, until, st.total)

    def hosts(self) -> list[str]:
        """The current membership, sorted."""
        self._run_due(self._clock())
        return sorted(self._hosts)

    def sweep(self) -> None:
        """Run the interval sweep(s) that are due now."""
        self._run_due(self._clock())

    def _in_panic(self) -> bool:
        n = len(self._hosts)
        mhp = self.settings.min_health_percent
        return n > 0 and mhp > 0 and 100 * (n - self._ejected) < mhp * n

    def _duration(self, st: _Host) -> float:
        s = self.settings
        return min(s.base_ejection_time_s * st.backoff, s.max_ejection_time_s)

    def _sweep_time(self, k: int) -> float:
        return self._t0 + k * self.settings.interval_s

    def _run_due(self, now: float) -> None:
        if self._t0 + self._next_sweep * self.settings.interval_s > now:  # no sweep due: the per-call path
            return
        while self._sweep_time(self._next_sweep) <= now:
            if self._ejected == 0:
                self._fast_forward(now)
                return
            self._sweep(self._sweep_time(self._next_sweep))
            self._next_sweep += 1

    def _fast_forward(self, now: float) -> None:
        # With nothing ejected, each remaining due sweep only decays every multiplier by one (a multiplier
        # above 0 means the host has been ejected and has returned), so k sweeps collapse into one pass.
        last = max(self._next_sweep, int((now - self._t0) // self.settings.interval_s))
        while self._sweep_time(last + 1) <= now:
            last += 1
        while last > self._next_sweep and self._sweep_time(last) > now:
            last -= 1
        k = last - self._next_sweep + 1
        for st in self._hosts.values():
            st.backoff = max(0, st.backoff - k)
        self._next_sweep = last + 1

    def _sweep(self, t: float) -> None:
        returned: list[str] = []
        for name, st in self._hosts.items():
            if st.ejected and st.ejected_at + self._duration(st) <= t + _EPS:
                st.ejected = False
                st.c5xx = st.cgw = 0  # Envoy: avoid re-ejecting on a few new errors after the return
                self._ejected -= 1
                returned.append(name)
            elif not st.ejected and st.backoff:
                # Not ejected with a multiplier: it returned at an earlier sweep, so it has been healthy for
                # at least one interval (Envoy checks the time since the last return the same way).
                st.backoff -= 1
        for name in returned:
            self._notify(name, False, "ejection_time_elapsed")

    def _notify(self, host: str, ejected: bool, reason: str) -> None:
        if self._listener is None:
            return
        try:
            self._listener(host, ejected, reason)
        except Exception:  # a metrics hook must not break routing or leave a sweep half done
            log.exception("outlier detection listener failed for %s", host)
