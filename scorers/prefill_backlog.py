"""Per-pod backlog of uncached prefill tokens, from epp's own view of what it sent.

Each attempt adds its predicted uncached prompt tokens to its pod's queue when sent. Tokens leave the queue
three ways:

- the attempt's first token arrived: the pod has prefilled it and, first come first served, everything sent
  to it before (those entries go too);
- the attempt ended (completed or failed) before that;
- time: the pod works through its queue at its estimated prefill rate, so an attempt whose end epp never
  hears of (a `POST /pick` hand-off, an Envoy stream without first-token events) drains away instead of
  counting forever.

Not thread-safe: one event loop owns it, as it owns the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Drain at most this often when asked for every pod (decisions come faster than that): a queue read up to
# 5 ms stale counts at most 5 ms of prefill too many, small beside any prompt's own.
DRAIN_STEP_S = 0.005


@dataclass(slots=True)
class _PodQueue:
    entries: dict[int, float] = field(default_factory=dict)  # attempt id -> tokens left, oldest first
    total: float = 0.0
    drained_at: float = 0.0


class PrefillBacklog:
    def __init__(self) -> None:
        self._pods: dict[str, _PodQueue] = {}
        self._next_id = 0
        # Bumped when an attempt is added or taken out (not by draining, which only follows the clock), so a
        # per-cycle cache of estimates knows a retry's cycle must recompute.
        self.generation = 0

    def tokens(self, pod: str, now: float, rate: float) -> float:
        """Uncached tokens still queued on `pod` at `now`, draining at `rate` tokens/s since last asked."""
        q = self._pods.get(pod)
        if q is None or not q.entries:
            return 0.0
        self._drain(q, now, rate)
        return q.total

    def queued(self, now: float, rate_of: Callable[[str], float]) -> dict[str, tuple[float, int]]:
        """Pod -> (tokens, attempts) queued at `now`, for the pods with any (drained at `rate_of(pod)`)."""
        out: dict[str, tuple[float, int]] = {}
        drain = self._drain
        for pod, q in self._pods.items():
            entries = q.entries
            if entries:
                if now - q.drained_at >= DRAIN_STEP_S:
                    drain(q, now, rate_of(pod))
                    if not entries:
                        continue
                out[pod] = (q.total, len(entries))
        return out

    def add(self, pod: str, tokens: float, now: float, rate: float) -> int:
        """Queue an attempt's tokens on `pod`; returns the attempt's id for `first_token` / `remove`."""
        q = self._pods.get(pod)
        if q is None:
            q = self._pods[pod] = _PodQueue(drained_at=now)
        elif q.entries:
            self._drain(q, now, rate)
        else:
            q.drained_at = now
        self._next_id += 1
        attempt = self._next_id
        tokens = max(0.0, tokens)
        q.entries[attempt] = tokens
        q.total += tokens
        self.generation += 1
        return attempt

    def first_token(self, pod: str, attempt: int) -> None:
        """The attempt's first token came: it and everything queued on the pod before it are prefilled."""
        q = self._pods.get(pod)
        if q is None or attempt not in q.entries:
            return
        done = [a for a in q.entries if a <= attempt]  # ids grow, and the dict keeps insertion order
        for a in done:
            q.total -= q.entries.pop(a)
        self._settle(q)
        self.generation += 1

    def remove(self, pod: str, attempt: int) -> None:
        """The attempt ended before its first token (or its end came first): take its tokens back."""
        q = self._pods.get(pod)
        if q is None:
            return
        left = q.entries.pop(attempt, None)
        if left is not None:
            q.total -= left
            self._settle(q)
            self.generation += 1

    def forget(self, pod: str) -> None:
        """The pod left or restarted: nothing is queued there any more."""
        if self._pods.pop(pod, None) is not None:
            self.generation += 1

    def _drain(self, q: _PodQueue, now: float, rate: float) -> None:
        budget = (now - q.drained_at) * rate
        q.drained_at = now
        if budget <= 0.0:
            return
        entries = q.entries
        while entries and budget > 0.0:
            attempt = next(iter(entries))
            left = entries[attempt]
            if left > budget:
                entries[attempt] = left - budget
                q.total -= budget
                break
            del entries[attempt]
            q.total -= left
            budget -= left
        self._settle(q)

    def _settle(self, q: _PodQueue) -> None:
        if not q.entries or q.total < 0.0:  # float drift
            q.total = max(0.0, sum(q.entries.values()))
