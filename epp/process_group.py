"""Stopping a child process: one started in its own process group (`start_new_session=True` / setsid), or a
plain child."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    """Send `sig` to the child's whole group (its id is the child's pid); a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def stop_group(
    proc: subprocess.Popen[Any], first: signal.Signals = signal.SIGTERM, grace_s: float = 10.0
) -> int:
    """Send `first` to the group, SIGKILL it after `grace_s`; returns the child's exit code.

    The group is signalled even when its leader has exited: a lingering grandchild would outlive it.
    """
    signal_group(proc, first)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait()
    return proc.returncode


def stop_child(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> int:
    """SIGTERM a plain child, SIGKILL it after `grace_s`; returns its exit code (a child gone is fine)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
