"""Pure pacing rules: when users join and when each user asks its next question.

All times are simulated seconds. With N users, R rounds and a target rate Q:
- each user waits N / Q seconds between the launches of its rounds (production-stack's rule);
- a new user joins every R / Q seconds, so N users are active in the steady state and they launch Q requests
  per second in total (production-stack joins every (R - 1) / Q seconds, which overshoots the rate by
  R / (R - 1) and degenerates for R = 1);
- at start the N - 1 users who would already be mid-conversation in the steady state are created with their
  past rounds counted as done (production-stack's ramp-up), so the run reaches the target rate at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Tolerance when dividing offsets that are exact multiples of a gap in real arithmetic.
_EPS = 1e-9


def request_gap(num_users: int, qps: float) -> float:
    """Seconds between the launches of two rounds of the same user."""
    return num_users / qps


def user_join_gap(num_rounds: int, qps: float) -> float:
    """Seconds between two new users joining."""
    return num_rounds / qps


@dataclass(frozen=True)
class RampUpUser:
    """A user created at start as if it had joined `offset` seconds before."""

    offset: float
    rounds_done: int
    last_request_time: float


def ramp_up_plan(num_users: int, num_rounds: int, qps: float, now: float) -> list[RampUpUser]:
    """The users already mid-conversation at `now` in the steady state, oldest first.

    The user who joined `offset` seconds ago launched a round at each multiple of the request gap strictly
    before `offset`; users who would have launched all their rounds are left out.
    """
    gap = request_gap(num_users, qps)
    join_gap = user_join_gap(num_rounds, qps)
    plan: list[RampUpUser] = []
    for k in range(num_users - 1, 0, -1):
        offset = k * join_gap
        done = math.ceil(offset / gap - _EPS)
        if done >= num_rounds:
            continue
        plan.append(RampUpUser(offset, done, now - offset + (done - 1) * gap))
    return plan


def round_is_due(now: float, last_request_time: float | None, gap: float, in_flight: bool) -> bool:
    """Whether a user launches its next round now: its answer is back and the gap has passed.

    A user whose answer comes back late launches as soon as it is back (it falls behind the target rate).
    """
    if in_flight:
        return False
    return last_request_time is None or now - last_request_time >= gap - _EPS


def user_join_due(now: float, last_join: float | None, join_gap: float) -> bool:
    """Whether a new user joins now."""
    return last_join is None or now - last_join >= join_gap - _EPS


def step_interval(num_users: int, num_rounds: int, qps: float, time_scale: float) -> float:
    """Wall-clock seconds between scheduler steps: a tenth of the shortest gap, within [5 ms, 100 ms]."""
    shortest = min(request_gap(num_users, qps), user_join_gap(num_rounds, qps)) / time_scale
    return min(0.1, max(0.005, shortest / 10))
