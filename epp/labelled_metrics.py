"""A metric family's labelled children, each looked up from prometheus-client once.

`labels()` takes a lock and checks its arguments on every call, microseconds each; the request path needs
several labelled series per request, so it keeps the children it has seen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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
