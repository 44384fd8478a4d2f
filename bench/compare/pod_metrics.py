"""Counters scraped from each pod's /metrics (vLLM names) and their change over a run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
SUCCESS = "vllm:request_success_total"


@dataclass(frozen=True)
class PodCounters:
    """One pod's cumulative counters at one scrape: prefix-cache tokens hit/queried, requests finished."""

    url: str
    prefix_hits: float
    prefix_queries: float
    requests: float

    def minus(self, earlier: PodCounters) -> PodCounters:
        """The change since `earlier` (a scrape of the same pod)."""
        return PodCounters(
            self.url,
            self.prefix_hits - earlier.prefix_hits,
            self.prefix_queries - earlier.prefix_queries,
            self.requests - earlier.requests,
        )


def parse_counters(url: str, text: str) -> PodCounters:
    """The counters of a Prometheus text exposition, summed over label sets; absent ones count as 0."""
    totals = {HITS: 0.0, QUERIES: 0.0, SUCCESS: 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return PodCounters(url, totals[HITS], totals[QUERIES], totals[SUCCESS])


def scrape_pods(urls: Iterable[str], timeout: float = 10.0) -> list[PodCounters]:
    """GET `url`/metrics of every pod; raises httpx.HTTPError when a pod does not answer 200."""
    with httpx.Client(timeout=timeout) as client:
        snapshots = []
        for url in urls:
            response = client.get(f"{url}/metrics")
            response.raise_for_status()
            snapshots.append(parse_counters(url, response.text))
        return snapshots


def deltas(before: Sequence[PodCounters], after: Sequence[PodCounters]) -> list[PodCounters]:
    """Per-pod change between two scrapes of the same pods (in the same order)."""
    if [p.url for p in before] != [p.url for p in after]:
        raise ValueError("the two scrapes are not of the same pods")
    return [a.minus(b) for b, a in zip(before, after, strict=True)]


def hit_rate(pods: Sequence[PodCounters]) -> float | None:
    """Prefix-cache hit rate over all pods (hit tokens / queried tokens); None when nothing was queried."""
    queries = sum(p.prefix_queries for p in pods)
    return sum(p.prefix_hits for p in pods) / queries if queries > 0 else None


def request_shares(pods: Sequence[PodCounters]) -> list[float]:
    """Each pod's fraction of the finished requests (all 0 when none finished)."""
    total = sum(p.requests for p in pods)
    return [p.requests / total if total > 0 else 0.0 for p in pods]
