"""Arrival times of open-loop workloads: Poisson at a steady rate, or on/off bursts at the same mean rate."""

from __future__ import annotations

import random


def poisson_arrivals(count: int, rate: float, rng: random.Random) -> list[float]:
    """`count` arrival times (simulated seconds from 0) of a Poisson process of `rate` per second."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate)
    return times


def on_off_arrivals(
    count: int, mean_rate: float, on_s: float, off_s: float, rng: random.Random
) -> list[float]:
    """`count` arrivals in bursts: Poisson during `on_s`-second windows, silence for `off_s` between them.

    The rate inside a burst is `mean_rate * (on_s + off_s) / on_s`, so over whole periods the mean rate is
    `mean_rate`, the same as a steady Poisson process: only the burstiness differs.
    """
    if on_s <= 0 or off_s < 0:
        raise ValueError(f"on_s must be positive and off_s not negative, got {on_s}, {off_s}")
    burst_rate = mean_rate * (on_s + off_s) / on_s
    active = poisson_arrivals(count, burst_rate, rng)
    # Time spent "on" maps onto the wall timeline with an off gap after every on window.
    return [t + (t // on_s) * off_s for t in active]
