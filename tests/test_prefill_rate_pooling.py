"""The prefill-rate estimate pooled over the fleet: noise between identical pods vanishes from predictions,
a pod that is really slower stays slower, and a fleet too small for a median is left alone."""

from __future__ import annotations

import random

import pytest

from epp.scheduling.types import SchedulingContext
from scorers.prefill_load_scorer import PrefillLoadScorer
from scorers.prefill_rate import POOL_BAND, WARMUP_SAMPLES, PrefillRateEstimator, pooled
from tests.test_sched_support import cand, request


def teach(est: PrefillRateEstimator, pod: str, rate: float, rng: random.Random, n: int = 40) -> None:
    """Streamed samples of one pod at `rate` tokens/s, 20 ms overhead, with +-15% jitter."""
    for _ in range(n):
        work = rng.uniform(300, 3000)
        est.observe(pod, work, (0.02 + work / rate) * rng.uniform(0.85, 1.15))


def teach_fleet(est: PrefillRateEstimator, rates: dict[str, float], seed: int) -> None:
    """Each pod taught at its rate, interleaved as a fleet's first tokens come (3 rounds of 15 samples)."""
    rng = random.Random(seed)
    for _ in range(3):
        for pod, rate in rates.items():
            teach(est, pod, rate, rng, n=15)


def test_soft_thresholding_keeps_the_median_inside_the_band_and_the_rest_of_a_difference_outside() -> None:
    assert pooled(1.10, 1.0, 0.0) == 1.0
    assert pooled(0.90, 1.0, 0.0) == 1.0
    assert pooled(2.0, 1.0, 0.0) == pytest.approx(2.0 - POOL_BAND)
    assert pooled(0.5, 1.0, 0.0) == pytest.approx(0.5 + POOL_BAND * 0.5)
    assert pooled(1.0 + POOL_BAND + 0.01, 1.0, 0.01) == 1.0  # the absolute floor widens the band
    assert pooled(1.0, 4.0, 0.0) == pytest.approx(1.0 + POOL_BAND)  # a fraction of the smaller value


def test_identical_pods_predict_alike_though_their_fits_differ() -> None:
    est = PrefillRateEstimator(prior_rate=5000)
    pods = [f"pod-{i}" for i in range(4)]
    teach_fleet(est, dict.fromkeys(pods, 4000.0), seed=7)
    fitted = [est.models[p].theta[1] for p in pods]
    assert max(fitted) > min(fitted)  # the noise is there in the fits...
    predictions = {round(est.predict(p, 2000), 9) for p in pods}
    assert len(predictions) == 1  # ...and not in what the scorer reads
    assert est.rate(pods[0]) == pytest.approx(4000, rel=0.2)


def test_a_really_slower_pod_still_looks_slower() -> None:
    est = PrefillRateEstimator(prior_rate=5000)
    teach_fleet(est, {"a": 8000.0, "b": 8000.0, "c": 8000.0, "slow": 2000.0}, seed=8)
    assert est.rate("a") == est.rate("b") == est.rate("c")
    assert est.rate("a") / est.rate("slow") > 2.5  # 4x in truth; the band takes a little of it
    assert est.predict("slow", 2000) > 2 * est.predict("a", 2000)


def test_a_fleet_split_between_fast_and_slow_pods_keeps_both_sides_apart() -> None:
    est = PrefillRateEstimator(prior_rate=5000)
    teach_fleet(est, {"f1": 8000.0, "f2": 8000.0, "s1": 2000.0, "s2": 2000.0}, seed=10)
    assert est.rate("f1") == pytest.approx(8000, rel=0.3)  # the median is a slow pod's
    assert est.rate("f1") / est.rate("s1") > 2.5


def test_fewer_than_three_learned_pods_are_not_pooled() -> None:
    est = PrefillRateEstimator(prior_rate=5000)
    rng = random.Random(9)
    teach(est, "a", 4000.0, rng)
    teach(est, "b", 6000.0, rng)
    teach(est, "c", 5000.0, rng, n=WARMUP_SAMPLES - 1)  # not learned yet
    for pod in ("a", "b"):
        assert est.models[pod].used == est.models[pod].theta
    assert est.rate("a") < est.rate("b")


def test_an_idle_fleet_of_identical_pods_scores_alike_though_noise_fitted_them_apart() -> None:
    # Rates as noisy samples left four identical pods: 24% apart at the extremes. Unpooled, the
    # quickest-looking pod alone would score 1 and take every request the idle fleet gets.
    load = PrefillLoadScorer(prior_rate=5000)
    teach_fleet(load.rates, {"a": 4200.0, "b": 4600.0, "c": 5000.0, "d": 5200.0}, seed=11)
    ctx = SchedulingContext(request("fresh prompt " * 300))
    pods = [cand(p) for p in "abcd"]
    assert set(load.score(ctx, pods).values()) == {1.0}
    for pod in "abcd":  # the fits themselves still differ
        load.rates.models[pod].used[:] = load.rates.models[pod].theta
    unpooled = load.score(SchedulingContext(request("fresh prompt " * 300)), pods)
    assert min(unpooled.values()) < 1.0
