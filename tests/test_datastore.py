from epp.datastore import Datastore, Endpoint, EndpointEvent, MetricsSnapshot


def snap(t: float, start: float = 1.0, queries: float = 0.0) -> MetricsSnapshot:
    return MetricsSnapshot(
        waiting=0,
        running=0,
        kv_cache_usage=0.0,
        scraped_at=t,
        process_start_time=start,
        prefix_cache_queries=queries,
    )


def test_membership_events_and_staleness() -> None:
    events: list[tuple[EndpointEvent, str]] = []
    ds = Datastore(staleness_s=0.5)
    ds.subscribe(lambda ev, ep: events.append((ev, ep.name)))
    a, b = Endpoint("a", "127.0.0.1", 1), Endpoint("b", "127.0.0.1", 2)
    ds.set_endpoints([a, b])
    assert ds.schedulable(now=10.0) == []  # never scraped
    ds.update_metrics("a", snap(10.0))
    assert [s.endpoint.name for s in ds.schedulable(now=10.2)] == ["a"]
    assert ds.schedulable(now=10.6) == []  # stale
    ds.update_metrics("a", snap(11.0))
    ds.record_scrape_failure("a", "connection refused")
    assert ds.schedulable(now=11.0) == []
    ds.set_endpoints([b])
    assert (EndpointEvent.REMOVED, "a") in events


def test_restart_detected_from_start_time_and_counter_reset() -> None:
    events: list[EndpointEvent] = []
    ds = Datastore()
    ds.subscribe(lambda ev, ep: events.append(ev))
    ds.set_endpoints([Endpoint("a", "h", 1)])
    ds.update_metrics("a", snap(1.0, start=1.0, queries=10))
    ds.update_metrics("a", snap(2.0, start=1.0, queries=12))
    assert EndpointEvent.RESTARTED not in events
    ds.update_metrics("a", snap(3.0, start=1.0, queries=2))
    ds.update_metrics("a", snap(4.0, start=5.0, queries=3))
    assert events.count(EndpointEvent.RESTARTED) == 2


def test_in_flight_never_negative() -> None:
    ds = Datastore()
    ds.set_endpoints([Endpoint("a", "h", 1)])
    ds.acquire("a")
    ds.release("a")
    ds.release("a")
    state = ds.get("a")
    assert state is not None and state.in_flight == 0
