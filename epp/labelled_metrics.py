"""A metric family's labelled children, each looked up from prometheus-client once.

`labels()` takes a lock and checks its arguments on every call, microseconds each; the request path needs
several labelled series per request, so it keeps the children it has seen. `HistogramSeries` observes into
one histogram child for a fraction of `Histogram.observe`'s cost (a bisection instead of a scan of every
bucket, no per-call checks).
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.values import MutexValue

M = TypeVar("M", bound=MetricWrapperBase)
S = TypeVar("S")


class _ByLabels(Generic[S]):
    """What `wrap` makes of each child of `family`, by label values in the family's label order."""

    def __init__(self, family: Any, wrap: Callable[[Any], S]) -> None:
        self.family = family
        self._wrap = wrap
        self._children: dict[tuple[str, ...], S] = {}

    def __call__(self, *values: str) -> S:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._wrap(self.family.labels(*values))
        return child

    def remove_where(self, match: Callable[[tuple[str, ...]], bool]) -> None:
        """Drop the series whose label values match (an endpoint that left the pool)."""
        for values in [v for v in self._children if match(v)]:
            del self._children[values]
            with contextlib.suppress(KeyError):
                self.family.remove(*values)


class LabelledChildren(_ByLabels[M]):
    """prometheus-client's own children of `family` by label values."""

    def __init__(self, family: M) -> None:
        super().__init__(family, _same)


def _same(child: Any) -> Any:
    return child


class ValueSeries:
    """`inc`/`dec` of one Counter or Gauge (or a labelled child of one), written as HistogramSeries writes:
    straight into prometheus-client's in-process value (its lock only guards against writers on other threads;
    these are written from the event loop only), or through the value's own `inc` in multiprocess mode.
    Counters must only be given positive amounts, as with `Counter.inc`."""

    __slots__ = ("_direct", "_value")

    def __init__(self, child: Counter | Gauge) -> None:
        if child._labelnames and not child._labelvalues:
            raise ValueError(f"{child._name} has labels: count one of its children")
        self._value = child._value
        self._direct = type(self._value) is MutexValue

    def inc(self, amount: float = 1.0) -> None:
        if self._direct:
            self._value._value += amount
        else:
            self._value.inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)


class LabelledValues(_ByLabels["ValueSeries"]):
    """ValueSeries of a Counter or Gauge family by label values, each built once."""

    def __init__(self, family: Counter | Gauge) -> None:
        super().__init__(family, ValueSeries)


class HistogramSeries:
    """`observe` for one labelled (or label-less) Histogram child, counted exactly as `child.observe` would:
    the sum, and the first bucket whose upper bound is >= the value (a NaN is added to the sum only).

    With prometheus-client's in-process values (MutexValue) the sum and the bucket are added to directly:
    their lock guards against writers on other threads, and these series are written from the event loop
    only (an exposition on another thread still reads whole floats). Other value classes (multiprocess
    mode) are added to through their own `inc`.
    """

    __slots__ = ("_bounds", "_buckets", "_direct", "_sum")

    def __init__(self, child: Histogram) -> None:
        if child._labelnames and not child._labelvalues:
            raise ValueError(f"{child._name} has labels: observe one of its children")
        self._bounds = list(child._upper_bounds)  # ends with +Inf: every number has a bucket
        self._buckets = child._buckets
        self._sum = child._sum
        self._direct = type(self._sum) is MutexValue and all(type(b) is MutexValue for b in self._buckets)

    def observe(self, amount: float) -> None:
        if self._direct:
            self._sum._value += amount
            if amount == amount:  # NaN compares false with every bound: prometheus-client counts no bucket
                self._buckets[bisect_left(self._bounds, amount)]._value += 1.0
            return
        self._sum.inc(amount)
        if amount == amount:
            self._buckets[bisect_left(self._bounds, amount)].inc(1)


class LabelledSeries(_ByLabels["HistogramSeries"]):
    """HistogramSeries of `family` by label values, each built once."""

    def __init__(self, family: Histogram) -> None:
        super().__init__(family, HistogramSeries)


OTHER = "other"  # the label value of client-controlled values past a family's cap
DEFAULT_LABEL_CAP = 1000


class CappedLabel:
    """One label of one metric family whose values a client controls (a model name, a fairness id).

    The first `cap` distinct values keep their own series; later ones become `other`, so a client cannot
    grow /metrics (and Prometheus) without bound. Values the config names are `reserve`d: they always keep
    their label, and do not count against the cap. Not thread-safe (one event loop).
    """

    __slots__ = ("_cap", "_reserved", "_seen")

    def __init__(self, cap: int = DEFAULT_LABEL_CAP, reserved: Iterable[str] = ()) -> None:
        if cap < 0:
            raise ValueError(f"cap must be >= 0, got {cap}")
        self._cap = cap
        self._reserved = set(reserved)
        self._seen: set[str] = set()

    def reserve(self, values: Iterable[str]) -> None:
        """Values that always keep their own label (models the config names)."""
        self._reserved.update(values)
        self._seen -= self._reserved

    def __call__(self, value: str) -> str:
        """`value`, or `other` once the cap is reached and `value` is new."""
        if value in self._seen or value in self._reserved:
            return value
        if len(self._seen) < self._cap:
            self._seen.add(value)
            return value
        return OTHER

    def __len__(self) -> int:
        """Distinct values admitted so far (reserved ones excluded)."""
        return len(self._seen)
