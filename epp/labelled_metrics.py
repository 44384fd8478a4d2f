"""A metric family's labelled children, each looked up from prometheus-client once.

`labels()` takes a lock and checks its arguments on every call, microseconds each; the request path needs
several labelled series per request, so it keeps the children it has seen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class LabelledChildren(Generic[M]):
    """Children of `family` by label values, given in the family's label order."""

    def __init__(self, family: M) -> None:
        self.family = family
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.family.labels(*values)
        return child

    def remove_where(self, match: Callable[[tuple[str, ...]], bool]) -> None:
        """Drop the series whose label values match (an endpoint that left the pool)."""
        for values in [v for v in self._children if match(v)]:
            del self._children[values]
            with contextlib.suppress(KeyError):
                self.family.remove(*values)


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
