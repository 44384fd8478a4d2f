"""An online estimate of one pod's prefill speed, learned from its time to first token (TTFT).

Model: `ttft = overhead + work / rate + per_request * requests`, where `work` is the uncached prompt tokens
the pod had to prefill before this request's first token (its own plus those still queued ahead of it, as
epp accounted them), `requests` the requests it was already decoding when this one was sent (their decode
steps share the pod's batches and slow the prefill down), and `overhead` the fixed part (network,
scheduling, the first step). The three are fitted by recursive least squares (RLS) over (1, work,
requests) with a forgetting factor, so the estimate follows a pod that slows down or speeds up:

- no per-hardware constant: it starts from a prior (by default, the median of the other pods' estimates
  once they have some samples, else `DEFAULT_PRIOR_RATE` and no per-request cost; or a rate measured from
  the pod's scrapes, `seed`) with a wide covariance, and moves off it with the first few samples;
- robust: a residual beyond `HUBER_K` times the running mean absolute residual (and beyond half the
  prediction) is clipped to that bound
  (one TTFT spike, e.g. a LoRA load or a GC pause, moves the estimate by a bounded amount); but
  `CHANGE_STREAK` clipped residuals in a row on the same side mean the pod changed, and the covariance is
  widened again so the estimate follows within a few samples;
- bounded: the rate stays within [MIN_RATE, MAX_RATE] tokens/s, the overhead within [0, MAX_OVERHEAD_S],
  the per-request cost within [0, MAX_PER_REQUEST_S]; each variance is capped near the prior's, so a long
  run of samples that do not vary (every prompt the same length) cannot wind the covariance up;
- pooled: each pod's fit is its own, but predictions use it pulled toward the fleet's median. A parameter
  within POOL_BAND of the median of the pods that have learned (at least POOL_MIN_PODS of them) is taken as
  the median, one further off loses only the band (soft thresholding). Identical pods fit
  rates a few percent apart from noise alone, and the one that looked fastest would take what an idle fleet
  gets, learn more, and stay ahead; a pod really slower (another GPU, a degraded node) still looks slower.

Work is fitted in thousands of tokens, which keeps the parameters on similar scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_PRIOR_RATE = 5_000.0  # tokens/s: a 7-8B model on one mid-range GPU; only a starting point
DEFAULT_PRIOR_OVERHEAD_S = 0.02
MIN_RATE = 50.0
MAX_RATE = 5_000_000.0
MAX_OVERHEAD_S = 10.0
MAX_PER_REQUEST_S = 1.0
PRIOR_PER_REQUEST_SD_S = 0.01  # prior spread of the per-request cost (its prior value is 0)
FORGETTING = 0.97  # weight of the past per sample: about the last 30 samples count
HUBER_K = 3.0  # residuals beyond this many mean absolute residuals are clipped...
RELATIVE_INLIER = 0.5  # ...unless within this fraction of the prediction
WARMUP_SAMPLES = 5  # no clipping before this many samples: the residual scale is not known yet
CHANGE_STREAK = 3  # this many clipped residuals in a row on the same side: the pod changed, re-learn
POOL_BAND = 0.15  # a parameter within this fraction of the fleet's median (plus POOL_FLOOR) is the median
POOL_FLOOR = (0.002, 0.0, 0.001)  # ...and within these absolute amounts (s, s per 1000 tokens, s per request)
POOL_MIN_PODS = 3  # pods that have learned (WARMUP_SAMPLES) before their median means anything
MIN_RESIDUAL_SCALE_S = 0.002
_KTOK = 1000.0
_MAX_VARIANCE = 1e4  # cap on a covariance diagonal entry
_MIN_VARIANCE = 1e-12


@dataclass(slots=True)
class RateModel:
    """One pod's fit: theta = (overhead s, s per 1000 tokens, s per request in flight), its covariance."""

    theta: list[float]
    cov: list[list[float]]
    residual_scale_s: float
    samples: int = 0
    outlier_streak: int = 0  # clipped residuals in a row, signed (+ slower than predicted, - faster)
    prior_cov: list[float] = field(default_factory=list)  # diagonal to widen back to on a change
    # What predictions use: theta, or theta pulled toward the fleet's median (PrefillRateEstimator pools).
    used: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.used:
            self.used = list(self.theta)

    @property
    def overhead_s(self) -> float:
        return self.used[0]

    @property
    def s_per_ktok(self) -> float:
        return self.used[1]

    @property
    def s_per_request(self) -> float:
        return self.used[2]

    @property
    def rate(self) -> float:
        """Prefill tokens per second (as predictions use it)."""
        return _KTOK / self.used[1]

    def predict(self, work_tokens: float, requests: float = 0.0) -> float:
        """Seconds to the first token with `work_tokens` of prefill ahead (own included) and `requests`
        already in flight on the pod."""
        t = self.used
        return t[0] + max(0.0, work_tokens) / _KTOK * t[1] + max(0.0, requests) * t[2]


def prior_model(
    rate: float = DEFAULT_PRIOR_RATE, overhead_s: float = DEFAULT_PRIOR_OVERHEAD_S, per_request_s: float = 0.0
) -> RateModel:
    """A model that trusts its starting point little: a few samples move it most of the way."""
    s_per_ktok = _KTOK / min(MAX_RATE, max(MIN_RATE, rate))
    overhead_s = min(MAX_OVERHEAD_S, max(0.0, overhead_s))
    per_request_s = min(MAX_PER_REQUEST_S, max(0.0, per_request_s))
    diag = [
        max(overhead_s, 0.05) ** 2,
        (2.0 * s_per_ktok) ** 2,
        max(per_request_s, PRIOR_PER_REQUEST_SD_S) ** 2,
    ]
    return RateModel(
        theta=[overhead_s, s_per_ktok, per_request_s],
        cov=[[diag[i] if i == j else 0.0 for j in range(3)] for i in range(3)],
        residual_scale_s=max(MIN_RESIDUAL_SCALE_S, overhead_s),
        prior_cov=diag,
    )


def _clamp(theta: list[float]) -> None:
    theta[0] = min(MAX_OVERHEAD_S, max(0.0, theta[0]))
    theta[1] = min(_KTOK / MIN_RATE, max(_KTOK / MAX_RATE, theta[1]))
    theta[2] = min(MAX_PER_REQUEST_S, max(0.0, theta[2]))


def update(
    model: RateModel, work_tokens: float, ttft_s: float, requests: float = 0.0, forgetting: float = FORGETTING
) -> None:
    """Fold one observation into `model` (in place). Non-finite or negative observations are ignored."""
    values = (work_tokens, ttft_s, requests)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        return
    phi = (1.0, work_tokens / _KTOK, requests)
    theta, cov = model.theta, model.cov
    predicted = sum(p * t for p, t in zip(phi, theta, strict=True))
    error = ttft_s - predicted
    # Errors within half the prediction are never outliers: early on, or after a change, they are the news.
    bound = max(HUBER_K * model.residual_scale_s, RELATIVE_INLIER * predicted)
    if model.samples >= WARMUP_SAMPLES and abs(error) > bound:
        side = 1 if error > 0 else -1
        model.outlier_streak = model.outlier_streak + side if model.outlier_streak * side > 0 else side
        if abs(model.outlier_streak) >= CHANGE_STREAK:
            # Not outliers but a change (the pod slowed down or sped up): trust the data again, widely.
            model.outlier_streak = 0
            prior = model.prior_cov
            widened = [max(cov[i][i], prior[i], (2.0 * theta[i]) ** 2 if i else prior[i]) for i in range(3)]
            model.cov = cov = [[widened[i] if i == j else 0.0 for j in range(3)] for i in range(3)]
            model.residual_scale_s = abs(error) / HUBER_K
        else:
            error = math.copysign(bound, error)
    else:
        model.outlier_streak = 0
    # RLS: gain k = P phi / (lambda + phi' P phi); P = (P - k phi' P) / lambda.
    p_phi = [sum(cov[i][j] * phi[j] for j in range(3)) for i in range(3)]
    denom = forgetting + sum(phi[i] * p_phi[i] for i in range(3))
    gain = [v / denom for v in p_phi]
    for i in range(3):
        theta[i] += gain[i] * error
    _clamp(theta)
    new = [[(cov[i][j] - gain[i] * p_phi[j]) / forgetting for j in range(3)] for i in range(3)]
    model.cov = _bounded_covariance(new, model.prior_cov, theta)
    # Mean absolute residual (after the update's own clip), for the next outlier bound.
    model.residual_scale_s = max(MIN_RESIDUAL_SCALE_S, 0.9 * model.residual_scale_s + 0.1 * abs(error))
    model.samples += 1
    model.used[:] = theta


def _bounded_covariance(cov: list[list[float]], prior: list[float], theta: list[float]) -> list[list[float]]:
    """`cov` made symmetric, positive definite and bounded, for the next update.

    Forgetting inflates the variance of directions the samples do not vary in (all prompts the same length,
    say) without limit; each variance is capped near the prior's, so such a direction stays where it is. The
    cap scales the variable's row and column together (D P D, D diagonal), which keeps the matrix positive
    definite: capping the diagonal alone does not, and with an indefinite covariance the gain can take the
    wrong sign, so that every sample below the prediction raises it (seen on a lightly loaded pod, whose
    prompts barely vary: its estimate ran away from its samples by 6x and it stopped getting new users).
    """
    out = [[0.5 * (cov[i][j] + cov[j][i]) for j in range(3)] for i in range(3)]
    scale = [1.0, 1.0, 1.0]
    for i in range(3):
        cap = min(_MAX_VARIANCE, max(4.0 * prior[i], (2.0 * theta[i]) ** 2))
        if out[i][i] > cap:
            scale[i] = math.sqrt(cap / out[i][i])
    for i in range(3):
        for j in range(3):
            out[i][j] *= scale[i] * scale[j]
    if not _positive_definite(out):  # (rounding, or a variance driven to 0): start the correlations afresh
        out = [[max(_MIN_VARIANCE, out[i][i]) if i == j else 0.0 for j in range(3)] for i in range(3)]
    return out


def _positive_definite(m: list[list[float]]) -> bool:
    """Sylvester's criterion: every leading principal minor of the symmetric 3x3 `m` is positive."""
    a, b, c = m[0]
    _, d, e = m[1]
    f = m[2][2]
    if a <= _MIN_VARIANCE or a * d - b * b <= 0.0:
        return False
    return a * (d * f - e * e) - b * (b * f - c * e) + c * (b * e - c * d) > 0.0


def pooled(value: float, median: float, floor: float) -> float:
    """`value` soft-thresholded toward `median`: within the band it is the median, beyond it loses the band.

    The band is a fraction of the smaller of the two, so a fleet split between fast and slow pods (whose
    median may be a slow one) does not make the fast ones look much slower."""
    band = POOL_BAND * min(abs(value), abs(median)) + floor
    diff = value - median
    if diff > band:
        return value - band
    if diff < -band:
        return value + band
    return median


class PrefillRateEstimator:
    """Per-pod RateModels; a pod seen for the first time starts from the fleet's median, else the prior."""

    def __init__(
        self,
        prior_rate: float = DEFAULT_PRIOR_RATE,
        prior_overhead_s: float = DEFAULT_PRIOR_OVERHEAD_S,
        forgetting: float = FORGETTING,
    ) -> None:
        self.prior_rate = prior_rate
        self.prior_overhead_s = prior_overhead_s
        self.forgetting = forgetting
        self.models: dict[str, RateModel] = {}  # read freely; add through model(pod)
        self._medians: tuple[float, float, float] | None = None  # of the learned pods' theta, when enough
        self._since_pooled = 0  # observations since the medians were last recomputed

    def model(self, pod: str) -> RateModel:
        found = self.models.get(pod)
        if found is None:
            found = self.models[pod] = self._new_model()
        return found

    def _new_model(self) -> RateModel:
        learned = sorted(
            (m.rate, m.overhead_s, m.s_per_request)
            for m in self.models.values()
            if m.samples >= WARMUP_SAMPLES
        )
        if learned:  # the fleet is a better prior than any constant: pods usually share hardware
            return prior_model(*learned[len(learned) // 2])
        return prior_model(self.prior_rate, self.prior_overhead_s)

    def observe(self, pod: str, work_tokens: float, ttft_s: float, requests: float = 0.0) -> None:
        model = self.model(pod)
        update(model, work_tokens, ttft_s, requests, self.forgetting)
        # The medians move slowly: recomputed (and every pod re-pooled) about once per pod's sample.
        self._since_pooled += 1
        if self._since_pooled >= len(self.models) or self._medians is None:
            self.pool()
        else:
            self._pool_one(model, self._medians)

    def pool(self) -> None:
        """Recompute the fleet's medians and pull every pod's prediction parameters toward them."""
        self._since_pooled = 0
        learned = [m.theta for m in self.models.values() if m.samples >= WARMUP_SAMPLES]
        if len(learned) < POOL_MIN_PODS:
            self._medians = None
            for m in self.models.values():
                m.used[:] = m.theta
            return
        mid = len(learned) // 2
        medians = (
            sorted(t[0] for t in learned)[mid],
            sorted(t[1] for t in learned)[mid],
            sorted(t[2] for t in learned)[mid],
        )
        self._medians = medians
        for m in self.models.values():
            self._pool_one(m, medians)

    @staticmethod
    def _pool_one(model: RateModel, medians: tuple[float, float, float]) -> None:
        theta = model.theta
        model.used[:] = [pooled(theta[i], medians[i], POOL_FLOOR[i]) for i in range(3)]

    def seed(self, pod: str, rate: float) -> None:
        """Start `pod` from a measured `rate` (tokens/s) if it has learned nothing yet: a measurement of the
        pod itself (scorers/prefill_scrape_rate.py) beats any prior, and the fit refines it from there."""
        found = self.models.get(pod)
        if (found is None or found.samples == 0) and math.isfinite(rate) and rate > 0:
            self.models[pod] = prior_model(rate, self.prior_overhead_s)

    def rate(self, pod: str) -> float:
        return self.model(pod).rate

    def predict(self, pod: str, work_tokens: float, requests: float = 0.0) -> float:
        return self.model(pod).predict(work_tokens, requests)

    def forget(self, pod: str) -> None:
        """The pod left the pool: drop its model."""
        self.models.pop(pod, None)

    def snapshot(self) -> dict[str, tuple[float, float, float, int]]:
        """Pod -> (tokens/s, overhead seconds, seconds per request in flight, samples), for reports."""
        return {pod: (m.rate, m.overhead_s, m.s_per_request, m.samples) for pod, m in self.models.items()}
