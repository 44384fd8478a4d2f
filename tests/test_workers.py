"""epp.workers.Supervisor with real forked workers: start-up failure, crash loop, signal forwarding."""

from __future__ import annotations

import io
import os
import signal
import time

from epp.workers import Ready, Supervisor, WorkerPlan


def _serve_until_sigterm(index: int, ready: Ready) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ready(f"index {index}")
    deadline = time.monotonic() + 30
    while not stop and time.monotonic() < deadline:
        time.sleep(0.01)
    return 0 if stop else 9


def _second_fails_at_start(index: int, ready: Ready) -> int:
    if index == 1:
        return 3
    return _serve_until_sigterm(index, ready)


def _crashes_after_ready(index: int, ready: Ready) -> int:
    ready("")
    time.sleep(0.05)
    return 1


def test_a_worker_failing_at_start_up_stops_the_rest_with_its_code() -> None:
    log = io.StringIO()
    announced = []
    code = Supervisor(_second_fails_at_start, WorkerPlan(2), log).run(lambda: announced.append(1))
    assert code == 3 and announced == []
    assert "worker 1 (pid" in log.getvalue() and "exited during start-up (code 3)" in log.getvalue()


def test_sigterm_is_forwarded_and_a_clean_stop_exits_0() -> None:
    log = io.StringIO()
    code = Supervisor(_serve_until_sigterm, WorkerPlan(2), log).run(
        lambda: os.kill(os.getpid(), signal.SIGTERM)
    )
    text = log.getvalue()
    assert code == 0, text
    assert "worker 0 pid" in text and "ready: index 0" in text and "ready: index 1" in text
    assert "SIGTERM: stopping 2 worker(s)" in text


def test_a_crash_loop_stops_the_group() -> None:
    log = io.StringIO()
    plan = WorkerPlan(1, max_restarts=2, restart_window_s=60)
    code = Supervisor(_crashes_after_ready, plan, log).run()
    text = log.getvalue()
    assert code == 1, text
    assert text.count("restarting it") == 2  # the third exit within the window is one too many
    assert "exited (code 1); more than 2 worker exits within 60s: stopping" in text
