"""The picker's predicted prefix hit ratio: `llm_d_epp_prefix_indexer_hit_ratio` on each worker's /metrics.

The histogram gets one observation per scheduled request: the fraction of the prompt's prefix blocks the
picker believes the picked pod holds. Its `_sum` over its `_count`, summed over a gateway's workers, is the
mean prediction per request, to set beside the pods' actual hit rate (tokens hit / tokens queried).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

RATIO = "llm_d_epp_prefix_indexer_hit_ratio"


@dataclass(frozen=True)
class Prediction:
    """One scrape of one worker (or a sum): the histogram's sum of ratios and its observation count."""

    ratio_sum: float = 0.0
    count: float = 0.0

    def plus(self, other: Prediction) -> Prediction:
        return Prediction(self.ratio_sum + other.ratio_sum, self.count + other.count)

    def minus(self, earlier: Prediction) -> Prediction:
        return Prediction(self.ratio_sum - earlier.ratio_sum, self.count - earlier.count)

    @property
    def mean(self) -> float | None:
        """The mean predicted ratio; None when no request was scored by a prefix plugin."""
        return self.ratio_sum / self.count if self.count > 0 else None


def parse_prediction(text: str) -> Prediction:
    """The ratio histogram's `_sum` and `_count` in a Prometheus text exposition (0 when absent)."""
    ratio_sum = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{RATIO}_sum":
                ratio_sum += sample.value
            elif sample.name == f"{RATIO}_count":
                count += sample.value
    return Prediction(ratio_sum, count)


def scrape_predictions(urls: Iterable[str], timeout: float = 10.0) -> list[Prediction]:
    """GET each metrics URL; raises httpx.HTTPError when one does not answer 200."""
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        found = []
        for url in urls:
            response = client.get(url)
            response.raise_for_status()
            found.append(parse_prediction(response.text))
        return found


def total_change(before: Sequence[Prediction], after: Sequence[Prediction]) -> Prediction:
    """The change over a run, summed over the workers (scraped in the same order both times)."""
    if len(before) != len(after):
        raise ValueError("the two scrapes are not of the same workers")
    total = Prediction()
    for b, a in zip(before, after, strict=True):
        total = total.plus(a.minus(b))
    return total
