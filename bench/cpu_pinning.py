"""CPU pinning for benchmarks: the simulated pods on CPUs of their own, the rest of the run on the others.

On a small machine the simulator shares its cores with the router under test and the load generator. Its
clock then loses time whenever they are busy, so a router's own CPU use shows up in the pods' TTFT, which
real pods, on machines of their own, would not see. `--pod-cpus` keeps the two apart.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def parse_cpu_list(text: str) -> frozenset[int]:
    """`taskset -c` syntax: `0`, `0,2`, `0-3,6`; ValueError naming the bad part."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            lo, hi = int(first), int(last) if sep else int(first)
        except ValueError:
            raise ValueError(f"--pod-cpus: {part!r} is not a CPU number or range (e.g. 0 or 0-1)") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"--pod-cpus: {part!r} is not a CPU number or range (e.g. 0 or 0-1)")
        cpus.update(range(lo, hi + 1))
    if not cpus:
        raise ValueError("--pod-cpus needs at least one CPU")
    return frozenset(cpus)


def other_cpus(pod_cpus: frozenset[int]) -> frozenset[int]:
    """The CPUs this process may use that are not the pods'; ValueError when the pods' are not all usable
    or leave none over."""
    usable = frozenset(os.sched_getaffinity(0))
    if not pod_cpus <= usable:
        raise ValueError(
            f"--pod-cpus: CPU {_cpu_list(pod_cpus - usable)} is not available to this process "
            f"(available: {_cpu_list(usable)})"
        )
    rest = usable - pod_cpus
    if not rest:
        raise ValueError("--pod-cpus: leaves no CPU for the router and the load generator")
    return rest


@contextlib.contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block, and the processes it starts, on `cpus` (None: unchanged); the affinity is restored
    afterwards. (Linux pins the calling thread: start the processes from it.)"""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def off_pod_cpus(pod_cpus: frozenset[int] | None) -> contextlib.AbstractContextManager[None]:
    """`pinned` to the CPUs the pods do not have (unchanged when the pods are not pinned)."""
    return pinned(None if pod_cpus is None else other_cpus(pod_cpus))


def cpu_placement(pod_cpus: frozenset[int] | None) -> dict[str, str]:
    """For a report's provenance: which CPUs the pods and the rest ran on (empty when not pinned)."""
    if pod_cpus is None:
        return {}
    return {"pod_cpus": _cpu_list(pod_cpus), "other_cpus": _cpu_list(other_cpus(pod_cpus))}


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
