"""OutcomeBook: outcomes of ext_proc-routed requests applied from Envoy's access-log entries (no servers)."""

from __future__ import annotations

import orjson

from epp.health.outlier import OutlierDetector, OutlierSettings
from epp.request import CHAT_PATH
from epp.requestcontrol.director import Director, DirectorSettings
from epp.requestcontrol.lifecycle import RequestLifecycle
from epp.scheduling.profile import assemble_profile
from epp.scheduling.scheduler import Scheduler
from epp.servers.outcomes import OutcomeBook
from scorers.least_request_scorer import LeastRequestScorer
from scorers.max_score_picker import MaxScorePicker
from tests.test_request_picking import ListRecorder, make_datastore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Attempts:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_attempt(self, report, outcome: str) -> None:
        self.seen.append((report.endpoint.name, outcome))

    def on_retry(self, reason: str) -> None:
        pass


def setup(consecutive_5xx: int = 2):
    ds = make_datastore()
    outlier = OutlierDetector(OutlierSettings(consecutive_5xx=consecutive_5xx, max_ejection_percent=100))
    outlier.set_hosts(e.name for e in ds.endpoints())
    ds.outlier = outlier
    scheduler = Scheduler(ds, assemble_profile("p", [(LeastRequestScorer(), 1.0), (MaxScorePicker(), 1.0)]))
    observer = Attempts()
    director = Director(
        scheduler,
        ds,
        None,
        ListRecorder(),
        __import__("random").Random(0),
        DirectorSettings("x"),
        outlier=outlier,
        observer=observer,
    )
    clock = Clock()
    return ds, director, OutcomeBook(ttl_s=5.0, clock=clock), clock, observer, outlier


def routed(director: Director, book: OutcomeBook, rid: str) -> RequestLifecycle:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    lifecycle = director.begin(body, {"x-request-id": rid}, CHAT_PATH)
    book.routed(lifecycle)
    lifecycle.send()
    return lifecycle


def test_entry_after_the_stream_ended_completes_the_attempt_on_the_pick() -> None:
    ds, director, book, _, observer, _ = setup()
    lc = routed(director, book, "r1")
    pick = lc.endpoint
    assert ds.get(pick.name).in_flight == 1
    book.stream_ended(lc)
    assert ds.get(pick.name).in_flight == 0
    assert lc.in_attempt and len(book) == 1  # released, still waiting for its outcome
    assert book.resolve("r1", 200, pick.address)
    assert observer.seen == [(pick.name, "ok")] and len(book) == 0 and not lc.in_attempt


def test_entry_before_the_stream_ended_is_applied_and_the_end_changes_nothing() -> None:
    ds, director, book, _, observer, _ = setup()
    lc = routed(director, book, "r2")
    assert book.resolve("r2", 200, lc.endpoint.address)
    assert ds.get(lc.endpoint.name).in_flight == 0
    book.stream_ended(lc)
    assert observer.seen == [(lc.endpoint.name, "ok")] and len(book) == 0


def test_a_fallback_that_served_charges_the_pick_and_credits_the_server() -> None:
    ds, director, book, _, observer, outlier = setup(consecutive_5xx=1)
    lc = routed(director, book, "r3")
    pick = lc.endpoint
    other = next(e for e in ds.endpoints() if e.name != pick.name)
    book.stream_ended(lc)
    assert book.resolve("r3", 200, other.address)
    assert observer.seen == [(pick.name, "fallback"), (other.name, "ok")]
    assert outlier.is_ejected(pick.name) and not outlier.is_ejected(other.name)
    assert all(s.in_flight == 0 for s in ds.states())  # the request was over: nothing counted again


def test_envoys_own_error_fails_the_pick_and_a_client_gone_records_no_failure() -> None:
    _, director, book, _, observer, outlier = setup(consecutive_5xx=1)
    lc = routed(director, book, "r4")
    book.stream_ended(lc)
    book.resolve("r4", 503, "")  # no upstream answered
    assert observer.seen == [(lc.endpoint.name, "no_upstream")] and outlier.is_ejected(lc.endpoint.name)
    lc2 = routed(director, book, "r5")
    book.stream_ended(lc2)
    book.resolve("r5", 0, lc2.endpoint.address)  # the client left
    assert observer.seen[-1] == (lc2.endpoint.name, "client_gone")


def test_unknown_ids_are_ignored_and_unanswered_requests_are_abandoned_after_the_ttl() -> None:
    _, director, book, clock, observer, _ = setup()
    assert not book.resolve("nobody", 200, "10.0.0.1:8000")
    lc = routed(director, book, "r6")
    book.stream_ended(lc)
    clock.now += 6.0
    lc2 = routed(director, book, "r7")
    book.stream_ended(lc2)  # expiry runs as entries are added
    assert observer.seen == [(lc.endpoint.name, "unknown")] and len(book) == 1
    assert not book.resolve("r6", 200, lc.endpoint.address)  # too late: already abandoned


def test_handed_over_request_stays_in_flight_until_its_entry_or_the_ttl() -> None:
    ds, director, _, clock, observer, _ = setup()
    book = OutcomeBook(ttl_s=5.0, clock=clock, in_flight_ttl_s=100.0)
    lc = routed(director, book, "h1")
    book.handed_over(lc)
    assert ds.get(lc.endpoint.name).in_flight == 1 and len(book) == 1
    assert book.resolve("h1", 200, lc.endpoint.address)
    assert ds.get(lc.endpoint.name).in_flight == 0 and len(book) == 0
    lost = routed(director, book, "h2")
    book.handed_over(lost)
    clock.now += 101.0
    book.handed_over(routed(director, book, "h3"))  # any later request expires the lost entry
    assert not lost.in_attempt and observer.seen[-1] == (lost.endpoint.name, "unknown")
    assert sum(s.in_flight for s in (ds.get(e.name) for e in ds.endpoints())) == 1  # only h3
