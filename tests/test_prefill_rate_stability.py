"""The prefill-rate fit stays put on samples that barely vary: its covariance stays positive definite, so
no sample can push the estimate away from itself."""

from __future__ import annotations

import random

import pytest

from scorers.prefill_rate import prior_model, update


def light_pod_samples(seed: int, n: int = 400) -> list[tuple[float, float, float]]:
    """(uncached tokens, TTFT s, requests in flight) as a lightly loaded pod behind a shared system prompt
    sees them: one new user's whole prompt, then returning users' short turns (130-155 tokens, 2-10 in
    flight, 30 ms +- 5), one new user's 540 uncached tokens in 20 (90 ms)."""
    rng = random.Random(seed)
    out = [(3024.0, 0.421, 0.0)]
    for i in range(n):
        if i % 20 == 19:
            out.append((rng.uniform(520, 560), rng.gauss(0.09, 0.005), float(rng.randrange(2, 11))))
        else:
            out.append((rng.uniform(130, 155), rng.gauss(0.032, 0.005), float(rng.randrange(2, 11))))
    return out


def is_positive_definite(m: list[list[float]]) -> bool:
    a, b, c = m[0]
    _, d, e = m[1]
    f = m[2][2]
    det = a * (d * f - e * e) - b * (b * f - c * e) + c * (b * e - c * d)
    return a > 0 and a * d - b * b > 0 and det > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_light_pods_fit_follows_its_samples(seed: int) -> None:
    model = prior_model()
    samples = light_pod_samples(seed)
    errors = []
    for work, ttft, requests in samples:
        errors.append(model.predict(work, requests) - ttft)
        update(model, work, ttft, requests)
        assert is_positive_definite(model.cov)
        assert model.cov[0][1] == model.cov[1][0] and model.cov[1][2] == model.cov[2][1]
    late = errors[-100:]
    # Before the fix, the estimate of such a pod rose with every sample below it, to 6x the samples.
    assert abs(sum(late) / len(late)) < 0.01
    assert model.predict(140, 6) == pytest.approx(0.032, abs=0.01)
    assert model.predict(540, 6) == pytest.approx(0.09, abs=0.02)
