"""LabelledChildren: one prometheus-client child per label values, removable by match."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from epp.labelled_metrics import LabelledChildren


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
