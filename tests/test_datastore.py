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
    ds.update_metrics("b", snap(10.5))
    assert [s.endpoint.name for s in ds.schedulable(now=10.6)] == ["b"]  # a is stale
    ds.update_metrics("a", snap(11.0))
    ds.record_scrape_failure("a", "connection refused")
    ds.update_metrics("b", snap(11.0))
    assert [s.endpoint.name for s in ds.schedulable(now=11.0)] == ["b"]  # a failed
    ds.set_endpoints([b])
    assert (EndpointEvent.REMOVED, "a") in events


def test_panic_mode_routes_on_old_metrics_when_no_endpoint_is_fresh() -> None:
    ds = Datastore(staleness_s=0.5)
    ds.set_endpoints([Endpoint("a", "h", 1), Endpoint("b", "h", 2), Endpoint("c", "h", 3)])
    ds.update_metrics("a", snap(10.0))
    ds.update_metrics("b", snap(10.0))
    ds.record_scrape_failure("b", "timed out", timed_out=True)
    # Nothing fresh: the slow endpoints that were scraped before are offered, the never-scraped one is not.
    assert [s.endpoint.name for s in ds.schedulable(now=12.0)] == ["a", "b"]
    ds.record_scrape_failure("a", "connection refused")  # down, not slow: never offered
    assert [s.endpoint.name for s in ds.schedulable(now=12.0)] == ["b"]
    ds.update_metrics("c", snap(12.0))
    assert [s.endpoint.name for s in ds.schedulable(now=12.1)] == ["c"]


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
