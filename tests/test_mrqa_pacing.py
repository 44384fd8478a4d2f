"""QPS pacing of the multi-round QA client, checked as pure functions on simulated time."""

import pytest

from bench.multi_round_qa.pacing import (
    ramp_up_plan,
    request_gap,
    round_is_due,
    step_interval,
    user_join_due,
    user_join_gap,
)
from bench.multi_round_qa.session import SessionManager
from tests.test_mrqa_prompts import make_cfg


def test_gaps() -> None:
    assert request_gap(num_users=10, qps=2.0) == pytest.approx(5.0)
    assert user_join_gap(num_rounds=4, qps=2.0) == pytest.approx(2.0)


def test_due_rules() -> None:
    assert round_is_due(0.0, None, 5.0, in_flight=False)
    assert not round_is_due(4.0, 0.0, 5.0, in_flight=False)
    assert round_is_due(5.0, 0.0, 5.0, in_flight=False)
    assert not round_is_due(50.0, 0.0, 5.0, in_flight=True)  # waits for its answer
    assert user_join_due(0.0, None, 2.0)
    assert not user_join_due(1.0, 0.0, 2.0)
    assert user_join_due(2.0, 0.0, 2.0)


def test_ramp_up_plan_places_users_mid_conversation() -> None:
    # N=4, R=5, Q=2: request gap 2 s, join gap 2.5 s; users joined 7.5, 5 and 2.5 s ago.
    plan = ramp_up_plan(num_users=4, num_rounds=5, qps=2.0, now=100.0)
    assert [(u.offset, u.rounds_done) for u in plan] == [(7.5, 4), (5.0, 3), (2.5, 2)]
    assert [u.last_request_time for u in plan] == pytest.approx([98.5, 99.0, 99.5])
    # Users who would have sent every round already are left out.
    assert ramp_up_plan(num_users=2, num_rounds=1, qps=1.0, now=0.0) == []


def simulate(num_users: int, num_rounds: int, qps: float, horizon: float, dt: float = 0.01):
    """Step a manager whose answers come back instantly; return launch times and active-user counts."""
    cfg = make_cfg(num_users=num_users, num_rounds=num_rounds, qps=qps, shared_system_prompt=1)
    manager = SessionManager(cfg, sharegpt=None)
    launches: list[float] = []
    active: list[int] = []
    for i in range(int(horizon / dt)):
        now = i * dt
        for order in manager.step(now):
            launches.append(now)
            manager.on_answer(order.user_id, "a")
        active.append(len(manager.sessions))
    return launches, active


@pytest.mark.parametrize(("users", "rounds", "qps"), [(4, 5, 2.0), (10, 3, 5.0), (3, 1, 1.5)])
def test_overall_rate_matches_qps(users: int, rounds: int, qps: float) -> None:
    launches, active = simulate(users, rounds, qps, horizon=120.0)
    steady = [t for t in launches if t >= 20.0]
    assert len(steady) / 100.0 == pytest.approx(qps, rel=0.05)
    # The ramp-up reaches the rate from the start.
    assert len([t for t in launches if t < 20.0]) / 20.0 == pytest.approx(qps, rel=0.15)
    assert max(active) <= users + 1


def test_slow_answers_hold_users_back() -> None:
    cfg = make_cfg(num_users=1, num_rounds=3, qps=10.0)
    manager = SessionManager(cfg, sharegpt=None)
    (order,) = manager.step(0.0)
    user_orders = [o for t in (0.2, 0.4, 0.6) for o in manager.step(t) if o.user_id == order.user_id]
    assert user_orders == []


def test_user_ids_are_sequential_from_init_user_id() -> None:
    cfg = make_cfg(num_users=2, num_rounds=2, qps=4.0, init_user_id=100)
    manager = SessionManager(cfg, sharegpt=None)
    seen: list[int] = []
    for i in range(400):
        for order in manager.step(i * 0.01):
            seen.append(order.user_id)
            manager.on_answer(order.user_id, "a")
    assert min(seen) == 100
    assert sorted(set(seen)) == list(range(100, max(seen) + 1))
    # Finished users were replaced: many more users than the steady-state count took part.
    assert len(set(seen)) > 4


def test_step_interval_bounds() -> None:
    assert step_interval(10, 10, 1.0, 1.0) == pytest.approx(0.1)
    assert step_interval(1, 1, 1000.0, 1.0) == pytest.approx(0.005)
    assert step_interval(4, 4, 4.0, 10.0) == pytest.approx(0.01)
