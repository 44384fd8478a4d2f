"""`prefill-load-scorer`: score pods by the estimated wait for this request's first token, in tokens.

A pod's estimated wait is `overhead + (backlog + own) / rate + per_request * requests`:

- `own`: this request's uncached prompt tokens on that pod, i.e. its prompt minus the leading blocks the
  `prefix-cache-scorer` (or `precise-prefix-cache-scorer`: its ratio's share of the prompt; `prefixPluginRef`)
  predicts the pod holds. Prompt characters become tokens at a ratio learned from the pods'
  `usage.prompt_tokens` (prior `charsPerToken`).
- `backlog`: the uncached tokens epp sent to the pod that have not reached their first token yet
  (scorers/prefill_backlog.py: added at pre-request, removed at first token, completion or failure, for the
  pod each attempt really went to, and drained at the pod's rate when no event comes).
- `replicas` (default 1): pickers sharing the traffic evenly; each counts its own backlog and in-flight
  requests that many times, since it sees only those (docs/replicas.md).
- `requests`: the requests the pod is decoding (epp's in-flight count, or the scrape's running + waiting
  when larger, minus those still in the backlog): their decode steps share the batches and slow a new
  prefill down.
- `rate`, `overhead`, `per_request`: learned per pod from streamed requests' TTFT against the work and the
  requests they waited behind (scorers/prefill_rate.py); no per-hardware constant, only a prior
  (`priorTokensPerSecond`; no per-request cost). Where epp sees no first token (behind Envoy, ext_proc;
  unstreamed answers) the same fit learns from the pod's own counters instead: each new scrape a candidate
  carries is offered to scorers/prefill_scrape_rate.py, and a scrape window with enough prefill becomes one
  observation (its mean uncached prompt against its mean prefill seconds, nothing queued ahead; a pod's first
  one also replaces the prior). A window in which a first token was observed gives none: the TTFT fit,
  which also sees epp's queue, keeps the lead.

Score = (lowest estimated wait among the candidates x 1.1) / the pod's, at most 1: the pods within 10% of the
quickest score 1 and one twice as slow about 0.55. The 10% is the estimate's noise: identical pods learn
rates a few percent apart (the estimator pools them toward the fleet's median, which removes most of that
once 3 pods have learned), and without it the one that looks fastest would take every request an idle
fleet gets (the least-request tie-breaker then spreads them). New users and cold prompts therefore spread
by token load, and requests sent back to back count at once (no scrape needed). `prefill-affinity-filter`
uses the same estimates to decide when prefix affinity stops paying.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.datastore import Endpoint, EndpointEvent, MetricsSnapshot
from epp.scheduling.params import parse_params
from epp.scheduling.plugins import PluginDeps, PluginRegistry
from epp.scheduling.types import AttemptReport, Candidate, SchedulingContext
from scorers.chars_per_token import DEFAULT_CHARS_PER_TOKEN, CharsPerToken
from scorers.plugin_refs import resolve_plugin_ref
from scorers.precise_prefix_cache_scorer import TYPE_NAME as PRECISE_TYPE
from scorers.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from scorers.prefill_backlog import PrefillBacklog
from scorers.prefill_rate import DEFAULT_PRIOR_RATE, PrefillRateEstimator
from scorers.prefill_scrape_rate import ScrapeRates
from scorers.prefix_cache_scorer import TYPE_NAME as PREFIX_SCORER_TYPE
from scorers.prefix_cache_scorer import PrefixCacheScorer

# The prefix plugins it can read: the approximate index of epp's own picks, or the pods' KV events.
PrefixPlugin = PrefixCacheScorer | PrecisePrefixCacheScorer

TYPE_NAME = "prefill-load-scorer"
WAIT_TOLERANCE = 0.1  # estimated waits within this fraction of the quickest one score as the quickest

logger = logging.getLogger(__name__)


class PrefillLoadParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prefix_plugin_ref: str = Field(default=PREFIX_SCORER_TYPE, min_length=1, alias="prefixPluginRef")
    chars_per_token: float = Field(default=DEFAULT_CHARS_PER_TOKEN, ge=0.5, le=20.0, alias="charsPerToken")
    prior_tokens_per_second: float = Field(
        default=DEFAULT_PRIOR_RATE, ge=50.0, le=5_000_000.0, alias="priorTokensPerSecond"
    )
    # Pickers sharing the traffic evenly, this one included (as least-request-scorer's): each sees only the
    # backlog and in-flight requests it sent itself, so it counts them this many times.
    replicas: int = Field(default=1, ge=1, le=1024)


@dataclass(slots=True)
class _Attempt:
    """One attempt's accounting, kept in the request's cycle state (a retry's attempt gets its own)."""

    pod: str
    id: int
    tokens: float  # predicted uncached prompt tokens on the pod
    ahead: float  # the pod's backlog when sent (this attempt excluded)
    requests: float  # requests the pod was serving when this one was scheduled
    sent_at: float
    open: bool = True


class PrefillLoadScorer:
    """Scorer and PreRequest / FirstToken / ResponseComplete / RequestFailed hooks over one backlog."""

    def __init__(
        self,
        name: str = TYPE_NAME,
        prefix: PrefixPlugin | None = None,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        prior_rate: float = DEFAULT_PRIOR_RATE,
        clock: Callable[[], float] = time.perf_counter,
        replicas: int = 1,
    ) -> None:
        self.name = name
        self.replicas = replicas
        self.prefix = prefix
        self.cpt = CharsPerToken(chars_per_token)
        self.rates = PrefillRateEstimator(prior_rate)
        self.backlog = PrefillBacklog()
        self.scrapes = ScrapeRates()
        self._scraped_at: dict[str, float] = {}  # pod -> `scraped_at` of the last scrape offered
        self.clock = clock
        self._attempts_key = f"{TYPE_NAME}:{name}:attempts"  # pod -> _Attempt
        self._waits_key = f"{TYPE_NAME}:{name}:waits"  # (generation, {pod: seconds})
        self._requests_key = f"{TYPE_NAME}:{name}:requests"  # {pod: requests in flight when scored}

    @property
    def chars_per_token(self) -> float:
        """The learned prompt characters per token."""
        return self.cpt.value

    def on_endpoint_event(self, event: EndpointEvent, endpoint: Endpoint) -> None:
        """Datastore listener: a restarted pod lost its queue; a removed one its rate too."""
        if event is EndpointEvent.REMOVED:
            self.backlog.forget(endpoint.name)
            self.rates.forget(endpoint.name)
            self.scrapes.forget(endpoint.name)
            self._scraped_at.pop(endpoint.name, None)
        elif event is EndpointEvent.RESTARTED:
            self.backlog.forget(endpoint.name)
            self.scrapes.forget(endpoint.name)

    # -- estimates ----------------------------------------------------------------------------------------
    def uncached_tokens(self, ctx: SchedulingContext, pod: str) -> float:
        """This request's prompt tokens `pod` must prefill: the prompt minus its predicted cached blocks."""
        chars = float(len(ctx.request.prompt))
        prefix = self.prefix
        if prefix is not None:
            chars = max(0.0, chars - prefix.cached_chars(ctx, ()).get(pod, 0.0))
        return chars / self.cpt.value

    def pending_tokens(self, pod: str, now: float | None = None) -> float:
        """Uncached tokens queued on `pod` that have not reached their first token."""
        t = self.clock() if now is None else now
        return self.backlog.tokens(pod, t, self.rates.rate(pod))

    def estimated_waits(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        """Pod -> estimated seconds to this request's first token there; computed once per cycle and
        recomputed when an attempt was added or ended since (a retry's cycle)."""
        generation = self.backlog.generation
        cached = ctx.cycle.data.get(self._waits_key)
        if cached is not None and cached[0] == generation:
            waits: dict[str, float] = cached[1]
        else:
            waits = {}
            ctx.cycle.data[self._waits_key] = (generation, waits)
        missing = [c for c in candidates if c.endpoint.name not in waits]
        if missing:
            self._estimate(ctx, missing, waits)
        if len(waits) == len(candidates):  # the same pods (all are in it): no copy; callers only read it
            return waits
        return {c.endpoint.name: waits[c.endpoint.name] for c in candidates}

    def _estimate(self, ctx: SchedulingContext, pods: Sequence[Candidate], out: dict[str, float]) -> None:
        # The per-decision hot path (every candidate, every request): locals and inlined arithmetic.
        now = self.clock()
        chars = len(ctx.request.prompt)
        per_char = 1.0 / self.cpt.value / 1000.0  # kilotokens per character
        prefix = self.prefix
        cached_get = (prefix.cached_chars(ctx, pods) if prefix is not None else {}).get
        rates = self.rates
        queued_get = self.backlog.queued(now, rates.rate).get
        models_get = rates.models.get
        requests: dict[str, float] = ctx.cycle.data.setdefault(self._requests_key, {})
        scraped_get = self._scraped_at.get
        whole = chars * per_char
        r = self.replicas
        for c in pods:
            pod = c.endpoint.name
            m = c.metrics
            if m.prefill_time_s is not None and m.scraped_at != scraped_get(pod):
                self.observe_scrape(pod, m)
            model = models_get(pod)
            theta = (model if model is not None else rates.model(pod)).used
            hit = cached_get(pod)
            if hit:
                own = chars - hit
                ktok = own * per_char if own > 0 else 0.0
            else:
                ktok = whole
            # The requests past their prefill (decoding): in flight as least-request counts it (epp's own
            # count, or the scrape's when it sees more) minus those still queued, already counted in tokens.
            n = m.running + m.waiting
            if c.in_flight * r > n:
                n = c.in_flight * r
            q = queued_get(pod)
            if q is not None:
                ktok += q[0] * r / 1000.0
                n -= q[1] * r
            if n > 0:
                requests[pod] = n
                out[pod] = theta[0] + ktok * theta[1] + n * theta[2]
            else:
                out[pod] = theta[0] + ktok * theta[1]

    def observe_scrape(self, pod: str, metrics: MetricsSnapshot) -> None:
        """A scrape of `pod` not seen before: the rate fit learns from the window it closes, if any."""
        self._scraped_at[pod] = metrics.scraped_at
        sample = self.scrapes.offer(pod, metrics)
        if sample is None:
            return
        self.rates.seed(pod, sample.rate)
        self.rates.observe(pod, sample.mean_tokens, sample.mean_seconds)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "prefill rate: %s prefilled %.0f tokens in %.3fs over %.0f requests between scrapes "
                "(%.0f tokens/s); estimate now %.0f tokens/s",
                pod,
                sample.tokens,
                sample.seconds,
                sample.requests,
                sample.rate,
                self.rates.rate(pod),
            )

    def score(self, ctx: SchedulingContext, candidates: Sequence[Candidate]) -> dict[str, float]:
        waits = self.estimated_waits(ctx, candidates)
        if not waits:
            return {}
        near = max(min(waits.values()), 1e-6) * (1.0 + WAIT_TOLERANCE)
        return {pod: 1.0 if w <= near else near / w for pod, w in waits.items()}

    # -- lifecycle hooks -----------------------------------------------------------------------------------
    def pre_request(self, ctx: SchedulingContext, endpoint: Endpoint) -> None:
        pod = endpoint.name
        now = self.clock()
        rate = self.rates.rate(pod)
        ahead = self.backlog.tokens(pod, now, rate) * self.replicas  # the other pickers' sends too
        tokens = self.uncached_tokens(ctx, pod)
        attempts: dict[str, _Attempt] = ctx.cycle.data.setdefault(self._attempts_key, {})
        previous = attempts.get(pod)
        if previous is not None and previous.open:  # sent twice without an end: count it once
            self.backlog.remove(pod, previous.id)
        attempt_id = self.backlog.add(pod, tokens, now, rate)
        scored: dict[str, float] = ctx.cycle.data.get(self._requests_key, {})
        attempts[pod] = _Attempt(pod, attempt_id, tokens, ahead, scored.get(pod, 0.0), now)

    def first_token(self, ctx: SchedulingContext, endpoint: Endpoint, ttft_s: float) -> None:
        attempt = self._open_attempt(ctx, endpoint.name)
        if attempt is None:
            return
        attempt.open = False
        self.backlog.first_token(attempt.pod, attempt.id)
        # Only a streamed answer's first chunk marks the end of prefill; a whole answer also holds the decode.
        # The time is this attempt's own (from its send), not the request's, which includes failed attempts.
        if ctx.request.body.get("stream") is True:
            work, ttft = attempt.ahead + attempt.tokens, self.clock() - attempt.sent_at
            self.rates.observe(attempt.pod, work, ttft, attempt.requests)
            self.scrapes.first_token(attempt.pod)
            if logger.isEnabledFor(logging.DEBUG):
                model = self.rates.model(attempt.pod)
                logger.debug(
                    "prefill rate: request %s on %s waited %.3fs for %.0f tokens behind %.0f requests; "
                    "estimate now %.0f tokens/s + %.3fs + %.4fs per request (%d samples)",
                    ctx.request.request_id,
                    attempt.pod,
                    ttft,
                    work,
                    attempt.requests,
                    model.rate,
                    model.overhead_s,
                    model.s_per_request,
                    model.samples,
                )

    def response_complete(self, ctx: SchedulingContext, report: AttemptReport) -> None:
        self._close(ctx, report.endpoint.name)
        self.cpt.observe(len(ctx.request.prompt), report.prompt_tokens)

    def request_failed(self, ctx: SchedulingContext, report: AttemptReport) -> None:
        self._close(ctx, report.endpoint.name)

    def _open_attempt(self, ctx: SchedulingContext, pod: str) -> _Attempt | None:
        attempts: dict[str, _Attempt] | None = ctx.cycle.data.get(self._attempts_key)
        if not attempts:
            return None
        attempt = attempts.get(pod)
        return attempt if attempt is not None and attempt.open else None

    def _close(self, ctx: SchedulingContext, pod: str) -> None:
        attempt = self._open_attempt(ctx, pod)
        if attempt is not None:
            attempt.open = False
            self.backlog.remove(pod, attempt.id)


def resolve_prefix(name: str, ref: str, deps: PluginDeps) -> PrefixPlugin:
    """The prefix plugin named by parameter `prefixPluginRef`, defined before plugin `name`."""
    return resolve_plugin_ref(
        name,
        "prefixPluginRef",
        ref,
        deps,
        (PrefixCacheScorer, PrecisePrefixCacheScorer),
        (PREFIX_SCORER_TYPE, PRECISE_TYPE),
    )


def factory(name: str, params: Mapping[str, Any], deps: PluginDeps) -> PrefillLoadScorer:
    p = parse_params(PrefillLoadParams, name, params)
    prefix = resolve_prefix(name, p.prefix_plugin_ref, deps)
    plugin = PrefillLoadScorer(
        name, prefix, p.chars_per_token, p.prior_tokens_per_second, replicas=p.replicas
    )
    deps.datastore.subscribe(plugin.on_endpoint_event)
    return plugin


def register(registry: PluginRegistry) -> None:
    registry.register(TYPE_NAME, factory)
