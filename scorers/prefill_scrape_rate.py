"""A pod's prefill rate from two scrapes of its /metrics, for the requests whose first token epp never sees.

Behind Envoy (`epp serve` with ext_proc) epp sees the headers and the end of each answer but not its first
token, so `prefill-load-scorer` gets no time to first token to learn from. vLLM counts what is needed:

- tokens: the growth of `vllm:prompt_tokens_total - vllm:prefix_cache_hits_total`, the prompt tokens it
  computed rather than found in its prefix cache;
- seconds: the growth of `vllm:request_prefill_time_seconds_sum`, each request's time from its first schedule
  to its first token (queueing excluded), summed over requests; requests: the growth of its `_count`.

`ScrapeRates.offer` turns two scrapes of a pod into one `ScrapeSample`, or None:

- vLLM counts prompt tokens at a request's first token, cache hits when it is scheduled and prefill seconds
  when it finishes, so over a short window the three disagree (a request scheduled before the window and
  finished in it). A window therefore closes only once it spans `MIN_WINDOW_S` of wall time, at least
  `MIN_PREFILL_S` summed prefill seconds, one finished request and a positive token count; until then the
  older scrape stays the baseline and the window grows (an idle pod's counters do not move: no sample, and
  the estimate keeps its value).
- Requests prefilled in the same batch each count the batch's seconds, so under load the summed seconds
  exceed the pod's busy time by the prefill concurrency and tokens / seconds would be that many times too
  slow. The seconds are capped at the wall time between the two scrapes (the pod cannot have prefilled for
  longer) plus one mean request's prefill (the one under way when the window opened, whose seconds all land
  in it: without that allowance a window little longer than one long prefill reads too fast). The cap is
  near exact for a pod busy over a long window; the rate is otherwise a lower bound.
- A counter lower than in the baseline, or a new `process_start_time`, means the pod restarted: the new
  scrape becomes the baseline and gives no sample (never a negative or huge rate).
- A window in which the pod also gave a first-token observation (`first_token`) gives no sample: the TTFT
  fit measures the whole wait, epp's own queue included, and stays the only source while it has data.

The times are the pod's own seconds: with the simulator's `--time-scale` other than 1 they are simulated
seconds, not the wall seconds a time to first token is measured in.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.datastore import MetricsSnapshot
from epp.datastore import restarted as pod_restarted

MIN_WINDOW_S = 1.0  # wall seconds: 4 busy scrapes (DEFAULT_INTERVAL_S), enough for the counters to agree
MIN_PREFILL_S = 0.05  # summed prefill seconds: a few steps' worth, not one step's fixed cost alone


@dataclass(frozen=True, slots=True)
class ScrapeSample:
    """What a pod prefilled between two scrapes."""

    tokens: float  # uncached prompt tokens computed
    prefill_s: float  # their prefill seconds, summed per request
    requests: float  # requests whose prefill time was recorded
    wall_s: float  # seconds between the two scrapes

    @property
    def seconds(self) -> float:
        """Prefill seconds with overlapping prefills counted about once: capped at the wall time plus one
        mean request's prefill."""
        return min(self.prefill_s, self.wall_s + self.prefill_s / self.requests)

    @property
    def rate(self) -> float:
        """Prefill tokens per second."""
        return self.tokens / self.seconds

    @property
    def mean_tokens(self) -> float:
        return self.tokens / self.requests

    @property
    def mean_seconds(self) -> float:
        return self.seconds / self.requests


def counters(m: MetricsSnapshot) -> tuple[float, float, float] | None:
    """(uncached prompt tokens, prefill seconds, prefill count), or None when the pod does not export them."""
    if m.prompt_tokens is None or m.prefix_cache_hits is None or m.prefill_time_s is None:
        return None
    if m.prefill_count is None:
        return None
    return m.prompt_tokens - m.prefix_cache_hits, m.prefill_time_s, m.prefill_count


def restarted(base: MetricsSnapshot, cur: MetricsSnapshot) -> bool:
    """The datastore's restart rule, or one of the prefill counters went down."""
    if pod_restarted(base, cur):
        return True
    pairs = (
        (base.prompt_tokens, cur.prompt_tokens),
        (base.prefix_cache_hits, cur.prefix_cache_hits),
        (base.prefill_time_s, cur.prefill_time_s),
        (base.prefill_count, cur.prefill_count),
    )
    return any(b is not None and c is not None and c < b for b, c in pairs)


def delta(
    base: MetricsSnapshot,
    cur: MetricsSnapshot,
    min_window_s: float = MIN_WINDOW_S,
    min_prefill_s: float = MIN_PREFILL_S,
) -> ScrapeSample | None:
    """The prefill between `base` and `cur` if the window is meaningful (module docstring), else None.
    The caller checks `restarted` first."""
    b, c = counters(base), counters(cur)
    if b is None or c is None:
        return None
    wall = cur.scraped_at - base.scraped_at
    tokens, seconds, requests = c[0] - b[0], c[1] - b[1], c[2] - b[2]
    if wall < min_window_s or seconds < min_prefill_s or requests < 1 or tokens <= 0:
        return None
    return ScrapeSample(tokens, seconds, requests, wall)


@dataclass(slots=True)
class _Window:
    base: MetricsSnapshot
    streamed: bool = False  # a first-token observation came during this window


class ScrapeRates:
    """Per pod, the baseline scrape of the open window; `offer` each new scrape."""

    def __init__(self, min_window_s: float = MIN_WINDOW_S, min_prefill_s: float = MIN_PREFILL_S) -> None:
        self.min_window_s = min_window_s
        self.min_prefill_s = min_prefill_s
        self._windows: dict[str, _Window] = {}

    def offer(self, pod: str, snapshot: MetricsSnapshot) -> ScrapeSample | None:
        """A new scrape of `pod`: the sample of the window it closes, or None (module docstring)."""
        if counters(snapshot) is None:
            return None
        window = self._windows.get(pod)
        if window is None or restarted(window.base, snapshot):
            self._windows[pod] = _Window(snapshot)
            return None
        if snapshot.scraped_at <= window.base.scraped_at:  # the same scrape again (or an older one)
            return None
        sample = delta(window.base, snapshot, self.min_window_s, self.min_prefill_s)
        if sample is None:
            return None
        streamed = window.streamed
        self._windows[pod] = _Window(snapshot)
        return None if streamed else sample

    def first_token(self, pod: str) -> None:
        """`pod` gave a first-token observation: its open window gives no sample."""
        window = self._windows.get(pod)
        if window is not None:
            window.streamed = True

    def forget(self, pod: str) -> None:
        """The pod restarted or left: its next scrape starts a new window."""
        self._windows.pop(pod, None)
