"""Run N copies of a server in forked worker processes, supervised: `epp gateway --workers N`.

Each worker runs `target(index, ready)` in its own process (its own event loop and state) and calls
`ready(note)` once it serves; `note` is printed by the supervisor. The supervisor

- waits for every worker to be ready; a worker that exits first (or the start-up timeout) stops the rest and
  the supervisor exits non-zero (the worker's own code, e.g. 2 for a config error, else 1);
- forwards SIGTERM/SIGINT to every worker as SIGTERM (each drains its in-flight requests), SIGKILLs those
  still running after `stop_grace_s`, and exits 0 when every worker exited 0;
- restarts a worker that dies after start-up, under the same index; more than `max_restarts` deaths within
  `restart_window_s` (a crash loop) stop everything with exit code 1.

Workers are forked, not spawned: they inherit the parsed command line and the imported modules, and start in
a fraction of the time. The supervisor runs no event loop and no threads, so forking it stays safe, also for
a restart.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TextIO

Ready = Callable[[str], None]
Target = Callable[[int, Ready], int]  # (worker index, ready) -> exit code
_POLL_S = 0.1  # how often the supervisor looks at its stop flag (a signal does not interrupt wait())


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    name: str = "supervisor"  # starts the supervisor's log lines
    startup_timeout_s: float = 60.0
    stop_grace_s: float = 20.0  # after the forwarded SIGTERM, before SIGKILL
    max_restarts: int = 5
    restart_window_s: float = 60.0


@dataclass
class _Worker:
    index: int
    proc: BaseProcess
    conn: Connection  # the worker's ready note arrives here
    ready: bool = False


@dataclass
class _State:
    stopping: bool = False
    signal_name: str = ""
    deaths: deque[float] = field(default_factory=deque)


def _child_main(target: Target, index: int, conn: Connection) -> None:
    # The supervisor's handlers were inherited: a signal before the worker installs its own must stop it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    def ready(note: str) -> None:
        with contextlib.suppress(OSError):
            conn.send(note)

    code = target(index, ready)
    sys.stdout.flush()
    sys.exit(code)


class Supervisor:
    def __init__(self, target: Target, plan: WorkerPlan, log: TextIO | None = None) -> None:
        self._target = target
        self._plan = plan
        self._log = log or sys.stderr
        self._ctx = multiprocessing.get_context("fork")
        self._workers: dict[int, _Worker] = {}
        self._state = _State()

    def _say(self, text: str) -> None:
        # One write per line: the workers log to the same stream, and `print` writes the text and its newline
        # separately, so on an unbuffered stream a worker's line could land between them.
        self._log.write(f"{self._plan.name}: {text}\n")
        self._log.flush()

    def _spawn(self, index: int) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_child_main, args=(self._target, index, send), daemon=False)
        proc.start()
        send.close()  # the child holds its own copy
        self._workers[index] = _Worker(index, proc, receive)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._state.stopping = True
        self._state.signal_name = signal.Signals(signum).name

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start the workers; `on_ready` once all are ready. Returns the exit code for the whole group."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self._plan.count):
                self._spawn(index)
            code = self._start_up()
            if code is not None:
                return code
            if on_ready is not None:
                on_ready()
            return self._serve()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _start_up(self) -> int | None:
        """None once every worker is ready; else the exit code (everything is stopped)."""
        deadline = time.monotonic() + self._plan.startup_timeout_s
        while not all(w.ready for w in self._workers.values()):
            if self._state.stopping:  # a signal before every worker was ready
                return self._stop_all()
            self._read_notes()
            for w in self._workers.values():
                if not w.proc.is_alive():
                    code = w.proc.exitcode
                    self._say(f"worker {w.index} (pid {w.proc.pid}) exited during start-up (code {code})")
                    self._stop_all()
                    return code if code and code > 0 else 1
            if time.monotonic() > deadline:
                self._say(f"not every worker was ready within {self._plan.startup_timeout_s:g}s")
                self._stop_all()
                return 1
        return None

    def _read_notes(self) -> None:
        pending = [w.conn for w in self._workers.values() if not w.ready]
        sentinels = [w.proc.sentinel for w in self._workers.values()]
        for ready in wait([*pending, *sentinels], timeout=_POLL_S):
            for w in self._workers.values():
                if w.conn is ready:
                    try:
                        note = w.conn.recv()
                    except (EOFError, OSError):
                        continue  # it died: the sentinel says so
                    w.ready = True
                    self._say(f"worker {w.index} pid {w.proc.pid} ready{': ' + note if note else ''}")

    def _serve(self) -> int:
        while not self._state.stopping:
            self._read_notes()
            for w in list(self._workers.values()):
                if w.proc.is_alive() or self._state.stopping:
                    continue
                exited = f"worker {w.index} (pid {w.proc.pid}) exited (code {w.proc.exitcode})"
                w.conn.close()
                if not self._may_restart():
                    plan = self._plan
                    limit = f"more than {plan.max_restarts} worker exits within {plan.restart_window_s:g}s"
                    self._say(f"{exited}; {limit}: stopping")
                    self._stop_all()
                    return 1
                self._say(f"{exited}; restarting it")
                self._spawn(w.index)
        self._say(f"{self._state.signal_name or 'stop'}: stopping {len(self._workers)} worker(s)")
        return self._stop_all()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        deaths = self._state.deaths
        deaths.append(now)
        while deaths and now - deaths[0] > self._plan.restart_window_s:
            deaths.popleft()
        return len(deaths) <= self._plan.max_restarts

    def _stop_all(self) -> int:
        """SIGTERM every worker, SIGKILL after the grace period; 0 when every one exited 0."""
        self._state.stopping = True
        for w in self._workers.values():
            if w.proc.is_alive() and w.proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._plan.stop_grace_s
        for w in self._workers.values():
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                self._say(
                    f"worker {w.index} (pid {w.proc.pid}) still running after {self._plan.stop_grace_s:g}s"
                )
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        return 0 if all(w.proc.exitcode == 0 for w in self._workers.values()) else 1


def supervise(target: Target, plan: WorkerPlan, on_ready: Callable[[], None] | None = None) -> int:
    """Run `plan.count` workers of `target` until a signal; the group's exit code."""
    return Supervisor(target, plan).run(on_ready)
