"""Run an `epp` subcommand as a child process, wait until it says it is ready, and stop it on exit."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO, Self

import httpx


def _pump_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Put each line of `stream` on `lines`, then "" at end of file."""
    for line in stream:
        lines.put(line)
    lines.put("")


class EppProcess:
    """`epp SUBCOMMAND ARGS...` as a subprocess; subclasses say what "ready" is in `_wait_ready()`.

    Used as `with Subclass(...) as p:`; the process is terminated (then killed) on exit or failed start.
    """

    def __init__(
        self,
        subcommand: str,
        args: Sequence[str],
        startup_timeout: float = 30.0,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.subcommand = subcommand
        self.args = list(args)
        self.startup_timeout = startup_timeout
        self.cpus = cpus  # run the child on these CPUs (None: this process's)
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "epp.cli", self.subcommand, *self.args]
        # stderr goes to a file: an undrained pipe would block the child once it logged 64 KiB.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        try:
            # (Right after the exec: long before the child's interpreter starts a thread.)
            if self.cpus is not None:
                os.sched_setaffinity(self.proc.pid, self.cpus)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def read_until(self, is_ready: Callable[[str], bool]) -> list[str]:
        """Lines of stdout up to and including the first one `is_ready` accepts."""
        assert self.proc is not None and self.proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        # A thread reads lines: select() on a buffered text pipe misses lines already in Python's buffer.
        threading.Thread(target=_pump_lines, args=(self.proc.stdout, lines), daemon=True).start()
        seen: list[str] = []
        deadline = time.monotonic() + self.startup_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                self.proc.wait(timeout=5)
                raise RuntimeError(f"epp {self.subcommand} exited before it was ready: {self.stderr_tail()}")
            seen.append(line)
            if is_ready(line):
                return seen
        raise TimeoutError(
            f"epp {self.subcommand} did not print its ready line within {self.startup_timeout}s"
        )

    def wait_http_ok(self, url: str) -> None:
        """Poll `url` until it answers 200 (within the startup timeout)."""
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} did not answer 200")
                time.sleep(0.05)

    def stderr_tail(self, chars: int = 2000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-chars:].strip()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
