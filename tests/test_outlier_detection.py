"""Outlier detection against Envoy's documented rules (see epp/health/outlier.py), on a fake clock."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from epp.health.outlier import AttemptResult, HostOutlierState, OutlierDetector, OutlierSettings
from epp.health.outlier_settings import (
    OUTLIER_ANNOTATION_PREFIX,
    OutlierDetectionSpec,
    outlier_spec_from_annotations,
    parse_duration,
)

_P = OUTLIER_ANNOTATION_PREFIX
OK, E5XX, GW = AttemptResult.SUCCESS, AttemptResult.HTTP_5XX, AttemptResult.GATEWAY_ERROR
T0 = 1000.0  # construction time: sweeps at 1010, 1020, ...


@dataclass
class FakeClock:
    t: float = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


Events = list[tuple[str, bool, str]]


def make(
    hosts: tuple[str, ...] = ("a", "b", "c", "d"), **kw: float
) -> tuple[OutlierDetector, FakeClock, Events]:
    clock = FakeClock()
    events: Events = []
    settings = OutlierSettings(**{"max_ejection_percent": 100.0, **kw})  # type: ignore[arg-type]
    det = OutlierDetector(settings, clock=clock, listener=lambda h, e, r: events.append((h, e, r)))
    det.set_hosts(hosts)
    return det, clock, events


def fail(det: OutlierDetector, host: str, n: int, result: AttemptResult = E5XX) -> list[bool]:
    return [det.record(host, result) for _ in range(n)]


def snap(det: OutlierDetector, host: str) -> HostOutlierState:
    st = det.state(host)
    assert st is not None
    return st


def eject_and_return(det: OutlierDetector, clock: FakeClock, host: str) -> None:
    """Eject the host, then jump to its return time (always a sweep here), before any decay."""
    fail(det, host, 5)
    until = snap(det, host).ejected_until
    assert until is not None
    clock.t = until
    assert not det.is_ejected(host)


def test_status_mapping() -> None:
    statuses = (200, 404, 429, 500, 501, 502, 503, 504, 599)
    assert [AttemptResult.from_status(s) for s in statuses] == [OK, OK, OK, E5XX, E5XX, GW, GW, GW, E5XX]


def test_threshold_ejection_is_immediate_not_at_sweep() -> None:
    det, clock, events = make()
    clock.advance(3)
    assert fail(det, "a", 5) == [False, False, False, False, True]
    assert det.is_ejected("a") and det.ejected_hosts() == ["a"]
    assert events == [("a", True, "consecutive_5xx")]
    st = snap(det, "a")
    assert (st.times_ejected, st.ejections_total, st.consecutive_5xx, st.ejected_until) == (1, 1, 0, 1033.0)


def test_success_resets_both_counters() -> None:
    det, _, _ = make(consecutive_gateway_errors=3)
    fail(det, "a", 2, GW)
    assert (snap(det, "a").consecutive_5xx, snap(det, "a").consecutive_gateway_errors) == (2, 2)
    det.record("a", OK)
    assert (snap(det, "a").consecutive_5xx, snap(det, "a").consecutive_gateway_errors) == (0, 0)
    assert fail(det, "a", 4) == [False] * 4 and not det.is_ejected("a")  # the streak started over


def test_gateway_errors_count_toward_5xx_too() -> None:
    det, _, events = make()  # gateway detection off: only the 5xx counter can fire
    assert fail(det, "a", 3, GW) + fail(det, "a", 2, E5XX) == [False] * 4 + [True]
    assert events == [("a", True, "consecutive_5xx")]


def test_plain_500_resets_the_gateway_counter_but_counts_as_5xx() -> None:
    det, _, events = make(consecutive_5xx=10, consecutive_gateway_errors=3)
    fail(det, "a", 2, GW)
    det.record("a", E5XX)
    assert (snap(det, "a").consecutive_5xx, snap(det, "a").consecutive_gateway_errors) == (3, 0)
    assert fail(det, "a", 3, GW) == [False, False, True]
    assert events == [("a", True, "consecutive_gateway_errors")]


def test_gateway_is_checked_first_when_both_thresholds_hit() -> None:
    det, _, events = make(consecutive_5xx=3, consecutive_gateway_errors=3)
    assert fail(det, "a", 3, GW) == [False, False, True]
    assert events == [("a", True, "consecutive_gateway_errors")]


def test_zero_thresholds_disable_detection() -> None:
    det, _, events = make(consecutive_5xx=0, consecutive_gateway_errors=0)
    assert not any(fail(det, "a", 50, GW) + fail(det, "a", 50, E5XX))
    assert events == [] and det.ejected_hosts() == []


def test_ejection_lasts_base_times_multiplier_and_returns_only_at_a_sweep() -> None:
    det, clock, events = make()
    clock.advance(5)
    fail(det, "a", 5)  # 1005: out until 1035, but sweeps are at 1030 and 1040
    assert snap(det, "a").ejected_until == 1035.0
    clock.advance(30)
    assert det.is_ejected("a")
    clock.advance(4.9)
    assert det.is_ejected("a")
    clock.advance(0.1)  # 1040
    assert not det.is_ejected("a") and events[-1] == ("a", False, "ejection_time_elapsed")
    st = snap(det, "a")
    assert (st.ejected, st.ejected_until, st.times_ejected) == (False, None, 1)


def test_second_ejection_lasts_twice_as_long() -> None:
    det, clock, _ = make()
    eject_and_return(det, clock, "a")  # 1000 -> 1030
    fail(det, "a", 5)
    st = snap(det, "a")
    assert (st.times_ejected, st.ejected_until) == (2, 1090.0)
    clock.advance(59.9)
    assert det.is_ejected("a")
    clock.advance(0.1)
    assert not det.is_ejected("a")


def test_ejection_time_is_capped_at_max_ejection_time() -> None:
    det, clock, _ = make(max_ejection_time_s=70.0)
    durations = []
    for _ in range(5):
        start = clock.t
        eject_and_return(det, clock, "a")
        durations.append(clock.t - start)
    assert durations == [30.0, 60.0, 70.0, 70.0, 70.0]
    st = snap(det, "a")
    assert (st.times_ejected, st.ejections_total) == (4, 5)  # Envoy stops at multiplier*base >= max+base


def test_multiplier_decrements_once_per_healthy_interval_after_return() -> None:
    det, clock, _ = make()
    for _ in range(3):
        eject_and_return(det, clock, "a")  # returns at 1030, 1090, 1180
    assert snap(det, "a").times_ejected == 3
    clock.advance(10)  # the first sweep one interval after the return
    assert snap(det, "a").times_ejected == 2
    clock.advance(10)
    assert snap(det, "a").times_ejected == 1
    fail(det, "a", 5)  # the next ejection is 2x base, not 4x
    st = snap(det, "a")
    assert (st.times_ejected, st.ejected_until) == (2, clock.t + 60.0)


def test_multiplier_never_decays_below_zero_and_restarts_at_base() -> None:
    det, clock, _ = make()
    fail(det, "a", 5)
    clock.advance(1000)
    st = snap(det, "a")
    assert (st.ejected, st.times_ejected) == (False, 0)
    fail(det, "a", 5)
    st = snap(det, "a")
    assert (st.times_ejected, st.ejected_until) == (1, clock.t + 30.0)


def test_several_overdue_sweeps_are_processed_in_order() -> None:
    det, clock, events = make()
    eject_and_return(det, clock, "a")  # multiplier 1, clock 1030
    eject_and_return(det, clock, "a")  # multiplier 2, clock 1090
    fail(det, "a", 5)  # multiplier 3: out until 1180
    fail(det, "b", 5)  # out until 1120
    clock.advance(120)  # 1210: sweeps 1100..1210 all run now, each with its own timestamp
    assert det.ejected_hosts() == []
    assert events[-2:] == [("b", False, "ejection_time_elapsed"), ("a", False, "ejection_time_elapsed")]
    # b returned at 1120 and decayed at 1130..1210; a returned at 1180 and decayed at 1190, 1200, 1210.
    # One sweep at 1210 would have returned both with nothing decayed: (3, 1).
    assert (snap(det, "a").times_ejected, snap(det, "b").times_ejected) == (0, 0)
    fail(det, "a", 5)
    assert snap(det, "a").times_ejected == 1


def test_overdue_sweeps_decay_by_exactly_the_number_of_intervals() -> None:
    det, clock, _ = make(max_ejection_time_s=600.0)
    for _ in range(6):
        eject_and_return(det, clock, "a")
    assert snap(det, "a").times_ejected == 6
    clock.advance(25)  # two sweeps
    assert snap(det, "a").times_ejected == 4


def test_a_long_idle_gap_costs_one_pass_not_one_per_interval() -> None:
    det, clock, _ = make(interval_s=2**-10, base_ejection_time_s=2**-10)  # exact in binary: no rounding
    for _ in range(3):
        eject_and_return(det, clock, "a")
    clock.advance(1e6)  # a billion sweeps are due; with nothing ejected they only decay multipliers
    assert snap(det, "a").times_ejected == 0 and det.hosts() == ["a", "b", "c", "d"]


def test_max_ejection_percent_always_allows_one_host() -> None:
    det, _, events = make(max_ejection_percent=10.0)  # 1 of 4 is 25% > 10%, yet one may go
    assert fail(det, "a", 5)[-1] is True
    assert fail(det, "b", 5)[-1] is False  # refused: 2 of 4 > 10%
    assert det.ejected_hosts() == ["a"] and [e for e in events if e[1]] == [("a", True, "consecutive_5xx")]
    st = snap(det, "b")
    assert (st.consecutive_5xx, st.ejections_total, st.ejected) == (0, 0, False)  # counter reset
    assert fail(det, "b", 4) == [False] * 4  # a full new streak is needed to try again


def test_max_ejection_percent_50_allows_two_of_four_counting_the_host_being_ejected() -> None:
    det, _, _ = make(max_ejection_percent=50.0)
    assert [fail(det, h, 5)[-1] for h in ("a", "b", "c")] == [True, True, False]
    assert det.ejected_hosts() == ["a", "b"]
    det3, _, _ = make(hosts=("a", "b", "c"), max_ejection_percent=50.0)  # 2 of 3 would be 67% > 50%
    assert [fail(det3, h, 5)[-1] for h in ("a", "b")] == [True, False]


def test_max_ejection_percent_zero_ejects_nothing() -> None:
    det, _, _ = make(max_ejection_percent=0.0)
    assert fail(det, "a", 5)[-1] is False and det.ejected_hosts() == []


def test_min_health_percent_panics_only_strictly_below_the_threshold() -> None:
    det, _, _ = make(min_health_percent=75.0)
    fail(det, "a", 5)  # exactly 75% healthy: not below
    assert not det.panic() and det.ejected_hosts() == ["a"]
    fail(det, "b", 5)
    assert det.panic() and det.ejected_hosts() == []


def test_min_health_percent_panic_makes_every_host_routable_and_recovers() -> None:
    det, clock, _ = make(min_health_percent=60.0)
    fail(det, "a", 5)  # 75% healthy: no panic
    assert not det.panic() and det.is_ejected("a")
    clock.advance(12)
    fail(det, "b", 5)  # 50% healthy < 60%: panic
    assert det.panic() and det.ejected_hosts() == []
    assert not det.is_ejected("a") and not det.is_ejected("b")
    assert snap(det, "a").ejected and snap(det, "b").ejected  # the records survive the panic
    clock.advance(18)  # 1030: a returns, 75% healthy again
    assert not det.panic() and det.ejected_hosts() == ["b"] and det.is_ejected("b")


def test_set_hosts_removal_forgets_state_and_addition_starts_clean() -> None:
    det, _, events = make()
    fail(det, "a", 5)
    fail(det, "b", 3)
    det.set_hosts(["b", "c", "d", "e"])
    assert det.hosts() == ["b", "c", "d", "e"] and events[-1] == ("a", False, "removed")
    assert det.state("a") is None and not det.is_ejected("a")
    assert det.record("a", E5XX) is False  # unknown host: ignored
    assert snap(det, "b").consecutive_5xx == 3  # kept across the update
    assert snap(det, "e") == HostOutlierState(0, 0, 0, False, None, 0)
    det.set_hosts(["a", "b", "c", "d", "e"])
    assert snap(det, "a") == HostOutlierState(0, 0, 0, False, None, 0)


def test_removing_an_ejected_host_frees_its_share_of_max_ejection_percent() -> None:
    det, _, _ = make(max_ejection_percent=50.0)
    fail(det, "a", 5)
    fail(det, "b", 5)
    assert fail(det, "c", 5)[-1] is False  # 3 of 4 > 50%
    det.set_hosts(["b", "c", "d", "e"])
    assert fail(det, "c", 5)[-1] is True and det.ejected_hosts() == ["b", "c"]


def test_listener_gets_eject_and_return_reasons() -> None:
    det, clock, events = make(consecutive_gateway_errors=2)
    fail(det, "a", 5)
    fail(det, "b", 2, GW)
    clock.advance(30)
    det.sweep()
    det.set_hosts(["a", "c"])  # b had returned: no "removed" event for it
    fail(det, "c", 5)
    det.set_hosts(["a"])
    assert events == [
        ("a", True, "consecutive_5xx"),
        ("b", True, "consecutive_gateway_errors"),
        ("a", False, "ejection_time_elapsed"),
        ("b", False, "ejection_time_elapsed"),
        ("c", True, "consecutive_5xx"),
        ("c", False, "removed"),
    ]


def test_listener_exception_does_not_break_the_detector() -> None:
    def boom(host: str, ejected: bool, reason: str) -> None:
        raise RuntimeError("metrics down")

    clock = FakeClock()
    det = OutlierDetector(OutlierSettings(max_ejection_percent=100), clock=clock, listener=boom)
    det.set_hosts(["a", "b"])
    assert fail(det, "a", 5)[-1] is True
    clock.advance(30)
    assert det.ejected_hosts() == []


def test_ejected_host_is_not_reejected_and_its_counters_reset_on_return() -> None:
    det, clock, events = make()
    fail(det, "a", 5)
    assert fail(det, "a", 7) == [False] * 7
    assert (snap(det, "a").consecutive_5xx, snap(det, "a").ejections_total) == (7, 1)
    clock.advance(30)
    assert (snap(det, "a").consecutive_5xx, snap(det, "a").ejected, len(events)) == (0, False, 2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"consecutive_5xx": -1}, "consecutive_5xx must be an integer >= 0"),
     ({"consecutive_gateway_errors": True}, "consecutive_gateway_errors must be an integer"),
     ({"consecutive_5xx": 2.5}, "consecutive_5xx must be an integer"),
     ({"interval_s": 0}, "interval_s must be > 0"),
     ({"base_ejection_time_s": math.nan}, "base_ejection_time_s must be a finite number"),
     ({"max_ejection_time_s": math.inf}, "max_ejection_time_s must be a finite number"),
     ({"max_ejection_percent": 101}, "max_ejection_percent must be between 0 and 100"),
     ({"min_health_percent": -0.5}, "min_health_percent must be between 0 and 100"),
     ({"base_ejection_time_s": 60, "max_ejection_time_s": 30}, r"max_ejection_time_s \(30\) must be >=")],
)  # fmt: skip
def test_settings_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OutlierSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_defaults_are_istios() -> None:
    s = OutlierSettings()
    assert (s.consecutive_5xx, s.consecutive_gateway_errors, s.interval_s, s.base_ejection_time_s) == (
        5,
        0,
        10,
        30,
    )
    assert (s.max_ejection_time_s, s.max_ejection_percent, s.min_health_percent) == (300, 10, 0)
    assert OutlierDetectionSpec.model_validate({}).to_settings() == s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("2m", 120), ("10s", 10), ("500ms", 0.5), ("1.5s", 1.5), ("1m30s", 90),
     ("1h2m3s", 3723), ("250us", 250e-6), ("100ns", 1e-7), (" 5s ", 5), ("10", 10), (7, 7), (0.25, 0.25)],
)  # fmt: skip
def test_parse_duration_accepts(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("   ", "empty"), ("-1s", "> 0"), ("0s", "> 0"), (0, "> 0"), ("10 parsecs", "invalid"),
     ("1x", "invalid"), ("s", "invalid"), ("1m30", "invalid"), (math.nan, "finite"), (math.inf, "finite"),
     ("nan", "invalid"), (True, "duration must be")],
)  # fmt: skip
def test_parse_duration_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)  # type: ignore[arg-type]


def test_spec_parses_istio_yaml_fields_and_maps_to_settings() -> None:
    spec = OutlierDetectionSpec.model_validate(
        {"consecutive5xxErrors": 7, "consecutiveGatewayErrors": 3, "interval": "5m",
         "baseEjectionTime": "15m", "maxEjectionPercent": 50, "minHealthPercent": 25}
    )  # fmt: skip
    s = spec.to_settings()
    assert (s.consecutive_5xx, s.consecutive_gateway_errors, s.interval_s, s.base_ejection_time_s) == (
        7,
        3,
        300,
        900,
    )
    assert s.max_ejection_time_s == 900  # an unset max follows a larger base, as in Envoy and istiod
    assert (s.max_ejection_percent, s.min_health_percent) == (50.0, 25.0)
    by_name = OutlierDetectionSpec.model_validate({"consecutive_5xx_errors": 2, "max_ejection_time": "1m"})
    assert (by_name.to_settings().consecutive_5xx, by_name.to_settings().max_ejection_time_s) == (2, 60)


@pytest.mark.parametrize(
    "data",
    [{"consecutive5xxErrors": True}, {"consecutive5xxErrors": "3.5"}, {"consecutive5xxErrors": 3.0},
     {"consecutive5xxErrors": -1}, {"maxEjectionPercent": 101}, {"interval": "0s"}, {"splitExternal": True},
     {"baseEjectionTime": "60s", "maxEjectionTime": "30s"}],
)  # fmt: skip
def test_spec_rejects_bad_values(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        OutlierDetectionSpec.model_validate(data)


def test_annotations_parse_and_absence_gives_none() -> None:
    unrelated = {"inference.networking.x-k8s.io/routing-strategy": "PREFIX_CACHE"}
    assert outlier_spec_from_annotations(unrelated) is None and outlier_spec_from_annotations({}) is None
    spec = outlier_spec_from_annotations(
        {f"{_P}consecutive5xxErrors": "3", f"{_P}interval": "5s", **unrelated}
    )
    assert spec is not None
    s = spec.to_settings()
    assert (s.consecutive_5xx, s.interval_s, s.base_ejection_time_s) == (3, 5.0, 30.0)


@pytest.mark.parametrize(
    ("annotations", "fragment"),
    [({f"{_P}consecutiveErrors": "3"}, "'outlier-detection.epp.io/consecutiveErrors': unknown"),
     ({f"{_P}consecutive_5xx_errors": "3"}, "unknown outlier-detection field"),
     ({f"{_P}consecutive5xxErrors": "three"}, "'outlier-detection.epp.io/consecutive5xxErrors'.*integer"),
     ({f"{_P}interval": "10 parsecs"}, "'outlier-detection.epp.io/interval'.*invalid duration"),
     ({f"{_P}maxEjectionPercent": "150"}, "maxEjectionPercent'.*less than or equal to 100"),
     ({f"{_P}baseEjectionTime": "60s", f"{_P}maxEjectionTime": "30s"}, "maxEjectionTime.*must be >=")],
)  # fmt: skip
def test_annotations_errors_name_the_key(annotations: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        outlier_spec_from_annotations(annotations)
