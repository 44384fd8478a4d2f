"""epp's own Prometheus metrics (epp/metrics.py)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.metrics import EppMetrics


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(metrics: EppMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def make(clock: FakeClock) -> tuple[Datastore, EppMetrics]:
    ds = Datastore(staleness_s=1.0)
    ds.set_endpoints([Endpoint("a", "127.0.0.1", 1), Endpoint("b", "127.0.0.1", 2)])
    return ds, EppMetrics(ds, clock=clock)


def test_registry_is_per_instance() -> None:
    clock = FakeClock()
    _, m1 = make(clock)
    _, m2 = make(clock)
    assert m1.registry is not m2.registry
    m1.record_decision("PREFIX_CACHE", "ok", 1e-4, 0.5, "a")
    assert samples(m1)[("epp_decisions_total", (("result", "ok"), ("strategy", "PREFIX_CACHE")))] == 1
    assert ("epp_decisions_total", (("result", "ok"), ("strategy", "PREFIX_CACHE"))) not in samples(m2)


def test_decisions_latency_ratio_and_shed() -> None:
    _, m = make(FakeClock())
    m.record_decision("LOAD_AWARE", "ok", 5e-5, 0.75, "a")
    m.record_decision("LOAD_AWARE", "ok", 2e-3, None, "b")
    m.record_decision("LOAD_AWARE", "shed", 1e-5, None, None)
    s = samples(m)
    assert s[("epp_decisions_total", (("result", "ok"), ("strategy", "LOAD_AWARE")))] == 2
    assert s[("epp_decisions_total", (("result", "shed"), ("strategy", "LOAD_AWARE")))] == 1
    assert s[("epp_shed_requests_total", ())] == 1
    assert s[("llm_d_epp_scheduler_e2e_duration_seconds_count", ())] == 3
    # 5e-5 and 1e-5 fall at or under the 50 µs bucket, 2 ms does not.
    assert s[("llm_d_epp_scheduler_e2e_duration_seconds_bucket", (("le", "5e-05"),))] == 2
    assert (
        s[
            (
                "llm_d_epp_prefix_indexer_hit_ratio_count",
                (("plugin_name", "prefix-cache-scorer"), ("plugin_type", "prefix-cache-scorer")),
            )
        ]
        == 1
    )
    assert (
        s[
            (
                "llm_d_epp_prefix_indexer_hit_ratio_bucket",
                (
                    ("le", "0.7"),
                    *(("plugin_name", "prefix-cache-scorer"), ("plugin_type", "prefix-cache-scorer")),
                ),
            )
        ]
        == 0
    )
    assert (
        s[
            (
                "llm_d_epp_prefix_indexer_hit_ratio_bucket",
                (
                    ("le", "0.8"),
                    *(("plugin_name", "prefix-cache-scorer"), ("plugin_type", "prefix-cache-scorer")),
                ),
            )
        ]
        == 1
    )
    picks = [
        value
        for (name, labels), value in s.items()
        if name == "llm_d_epp_scheduler_attempts_total"
        and {("endpoint_name", "a"), ("status", "success")} <= set(labels)
    ]
    assert picks == [1]


def test_endpoint_gauges_follow_the_datastore() -> None:
    clock = FakeClock(100.0)
    ds, m = make(clock)
    ds.update_metrics("a", MetricsSnapshot(waiting=3, running=2, kv_cache_usage=0.25, scraped_at=99.5))
    ds.acquire("a")
    s = samples(m)
    assert (
        s[("llm_d_epp_per_endpoint_queue_size", (("model_server_endpoint", "a"), ("name", "default")))] == 3
    )
    assert s[("epp_endpoint_running_requests", (("endpoint", "a"),))] == 2
    assert s[("epp_endpoint_kv_cache_usage", (("endpoint", "a"),))] == 0.25
    assert s[("epp_endpoint_in_flight_requests", (("endpoint", "a"),))] == 1
    assert s[("epp_endpoint_metrics_staleness_seconds", (("endpoint", "a"),))] == 0.5
    assert s[("epp_endpoint_schedulable", (("endpoint", "a"),))] == 1
    assert s[("epp_endpoint_schedulable", (("endpoint", "b"),))] == 0
    assert s[("llm_d_epp_ready_endpoints", (("name", "default"),))] == 1
    # Time passes past the staleness bound: nothing is schedulable any more.
    clock.now = 102.0
    s = samples(m)
    assert s[("epp_endpoint_metrics_staleness_seconds", (("endpoint", "a"),))] == 2.5
    assert s[("llm_d_epp_ready_endpoints", (("name", "default"),))] == 0
    # A removed endpoint disappears from every per-endpoint series.
    m.on_scrape("a", False, 0.01, None, "connection refused")
    ds.set_endpoints([Endpoint("b", "127.0.0.1", 2)])
    assert not [k for k in samples(m) if ("endpoint", "a") in k[1]]
    assert s[("epp_endpoints", ())] == 2
    assert samples(m)[("epp_endpoints", ())] == 1


def test_scrape_observer() -> None:
    _, m = make(FakeClock())
    m.on_scrape("a", True, 0.002, MetricsSnapshot(0, 0, 0.0), None)
    m.on_scrape("b", False, 0.3, None, "timeout")
    m.on_scrape("b", False, 0.3, None, "timeout")
    s = samples(m)
    assert s[("epp_scrape_duration_seconds_count", ())] == 3
    assert s[("epp_scrape_errors_total", (("endpoint", "b"),))] == 2
    assert ("epp_scrape_errors_total", (("endpoint", "a"),)) not in s
