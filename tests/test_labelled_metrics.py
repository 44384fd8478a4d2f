"""LabelledChildren: one prometheus-client child per label values, removable by match."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from epp.labelled_metrics import (
    HistogramSeries,
    LabelledChildren,
    LabelledSeries,
    LabelledValues,
    ValueSeries,
)


def test_children_are_looked_up_once_and_count_like_labels() -> None:
    registry = CollectorRegistry()
    family = Counter("hits", "Hits.", ["endpoint", "outcome"], registry=registry)
    children = LabelledChildren(family)
    assert children("a", "ok") is children("a", "ok")
    children("a", "ok").inc()
    children("a", "ok").inc()
    children("b", "5xx").inc()
    assert registry.get_sample_value("hits_total", {"endpoint": "a", "outcome": "ok"}) == 2.0
    assert registry.get_sample_value("hits_total", {"endpoint": "b", "outcome": "5xx"}) == 1.0


def test_remove_where_drops_series_and_cache() -> None:
    registry = CollectorRegistry()
    family = Counter("hits", "Hits.", ["endpoint", "outcome"], registry=registry)
    children = LabelledChildren(family)
    children("a", "ok").inc()
    children("a", "reset").inc()
    children("b", "ok").inc()
    children.remove_where(lambda values: values[0] == "a")
    text = generate_latest(registry).decode()
    assert 'endpoint="a"' not in text and 'endpoint="b"' in text
    children("a", "ok").inc()  # a new child, counting from zero
    assert registry.get_sample_value("hits_total", {"endpoint": "a", "outcome": "ok"}) == 1.0


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_histogram_series_counts_exactly_as_observe() -> None:
    values = [0, 0.1, 0.10001, 1, 2.4, 2.5, 9.9, 10, 11, 1e9, -5, math.inf, 0.5, 3]
    by_observe, by_series = CollectorRegistry(), CollectorRegistry()
    plain = Histogram("h", "d", ["a"], buckets=(0.1, 1, 2.5, 10), registry=by_observe).labels("x")
    series = LabelledSeries(Histogram("h", "d", ["a"], buckets=(0.1, 1, 2.5, 10), registry=by_series))("x")
    for v in values:
        plain.observe(v)
        series.observe(v)
    assert _samples(by_series) == _samples(by_observe)
    for v in (-math.inf, math.nan):  # the lowest bucket; no bucket at all (the sum is NaN either way)
        plain.observe(v)
        series.observe(v)
    got, want = _samples(by_series), _samples(by_observe)
    assert math.isnan(got.pop(("h_sum", (("a", "x"),)))) and math.isnan(want.pop(("h_sum", (("a", "x"),))))
    assert got == want


def test_histogram_series_refuses_a_family_with_labels() -> None:
    family = Histogram("h", "d", ["a"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="has labels"):
        HistogramSeries(family)


def test_value_series_counts_exactly_as_inc_and_dec() -> None:
    by_method, by_series = CollectorRegistry(), CollectorRegistry()

    def families(registry: CollectorRegistry) -> tuple[Counter, Gauge, Gauge]:
        counter = Counter("c", "d", ["a"], registry=registry)
        gauge = Gauge("g", "d", ["a"], registry=registry)
        return counter, gauge, Gauge("open", "d", registry=registry)

    counter, gauge, unlabelled = families(by_method)
    counters, gauges, open_now = families(by_series)
    fast_counter, fast_gauge = LabelledValues(counters), LabelledValues(gauges)
    fast_open = ValueSeries(open_now)
    assert fast_counter("x") is fast_counter("x")
    for amount in (1.0, 2.5, 1.0):
        counter.labels("x").inc(amount)
        fast_counter("x").inc(amount)
        gauge.labels("y").inc(amount)
        fast_gauge("y").inc(amount)
        unlabelled.inc()
        fast_open.inc()
    gauge.labels("y").dec(4)
    fast_gauge("y").dec(4)
    unlabelled.dec()
    fast_open.dec()
    assert _samples(by_series) == _samples(by_method)
    fast_counter.remove_where(lambda values: values == ("x",))
    assert by_series.get_sample_value("c_total", {"a": "x"}) is None


def test_value_series_refuses_a_family_with_labels() -> None:
    with pytest.raises(ValueError, match="has labels"):
        ValueSeries(Counter("c", "d", ["a"], registry=CollectorRegistry()))
