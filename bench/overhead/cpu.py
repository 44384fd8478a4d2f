"""CPU time of this benchmark's child processes, read from /proc (Linux), split into backend and router.

On a small machine the load generator, the backend and the router compete for the same cores, so requests/s
alone mixes their costs; CPU seconds per request of the router's processes is its own cost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    pgid: int
    comm: str
    cpu_s: float  # user + system time


def read_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """One process's /proc/PID/stat, or None once it is gone."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may itself hold spaces or parentheses: split at the last ')'.
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, pgrp 5, utime 14, stime 15.
    return ProcStat(pid, int(fields[1]), int(fields[2]), comm, (int(fields[11]) + int(fields[12])) / _TICKS)


def descendants(root: int, proc: Path = Path("/proc")) -> list[ProcStat]:
    """Every live process below `root` (children, grandchildren, ...)."""
    pids = [int(p.name) for p in proc.iterdir() if p.name.isdigit()]
    stats = [s for pid in pids if (s := read_stat(pid, proc)) is not None]
    children: dict[int, list[ProcStat]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s)
    found: list[ProcStat] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


@dataclass(frozen=True)
class CpuSpent:
    """CPU seconds spent between two samples: the backend's, and the router's by process name."""

    backend_s: float
    router_by_comm: dict[str, float]

    @property
    def router_s(self) -> float:
        return sum(self.router_by_comm.values())


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far of the backend's process group and of every other descendant (the router)."""

    per_pid: dict[int, ProcStat]
    backend_pgid: int

    def minus(self, before: CpuSample) -> CpuSpent:
        """What was spent since `before`; processes started since count in full."""
        backend = 0.0
        router: dict[str, float] = {}
        for pid, stat in self.per_pid.items():
            old = before.per_pid.get(pid)
            spent = stat.cpu_s - (old.cpu_s if old is not None else 0.0)
            if stat.pgid == self.backend_pgid:
                backend += spent
            else:
                router[stat.comm] = router.get(stat.comm, 0.0) + spent
        return CpuSpent(backend, router)


def sample(backend_pgid: int, exclude_comms: frozenset[str] = frozenset({"wrk"})) -> CpuSample:
    """CPU time of this process's descendants, the load generator (`exclude_comms`) left out."""
    stats = {s.pid: s for s in descendants(os.getpid()) if s.comm not in exclude_comms}
    return CpuSample(stats, backend_pgid)
