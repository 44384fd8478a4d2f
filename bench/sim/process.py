"""Run `epp sim` as a subprocess (for end-to-end tests and benchmarks) and wait until its pods answer."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import IO

import httpx


def _pump_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Put each line of `stream` on `lines`, then "" at end of file."""
    for line in stream:
        lines.put(line)
    lines.put("")


class SimProcess:
    """`with SimProcess(["--pods", "2", "--profile", "tiny"]) as sim:` runs the simulator until exit.

    `sim.urls` are the pods' base URLs, read from the command's output once it printed its ready line and
    every pod answered /health. The process is terminated (then killed) on exit.
    """

    def __init__(self, args: list[str], startup_timeout: float = 30.0) -> None:
        self.args = args
        self.startup_timeout = startup_timeout
        self.urls: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "epp.cli", "sim", *self.args]
        # stderr goes to a file: an undrained pipe would block the simulator once it logged 64 KiB.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        try:
            self._read_until_ready()
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _read_until_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        # A thread reads lines: select() on a buffered text pipe misses lines already in Python's buffer.
        threading.Thread(target=_pump_lines, args=(stdout, lines), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                self.proc.wait(timeout=5)
                raise RuntimeError(f"epp sim exited before it was ready: {self._stderr_text()}")
            parts = line.split()
            if parts[:1] == ["pod"] and len(parts) >= 3:
                self.urls.append(parts[2])
            elif parts[:1] == ["ready"]:
                return
        raise TimeoutError(f"epp sim did not print its ready line within {self.startup_timeout}s")

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().strip()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            for url in self.urls:
                while True:
                    try:
                        if client.get(f"{url}/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{url} did not answer /health")
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> SimProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
