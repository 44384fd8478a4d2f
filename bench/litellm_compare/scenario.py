"""One run of one system: fresh simulated providers and taps, a steady phase, then the fault phase."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.litellm_compare.configs import Policy
from bench.litellm_compare.load import Fault, FaultTimes, Sample, run_load
from bench.litellm_compare.procs import TapProcess
from bench.litellm_compare.systems import SystemContext, open_system
from bench.sim.process import SimProcess


@dataclass(frozen=True, slots=True)
class Scenario:
    clients: int = 8
    steady_clients: int = 1  # latency is measured one request at a time: overhead, not queueing
    warmup_s: float = 2.0
    steady_s: float = 10.0  # no fault: latency
    run_s: float = 30.0  # the fault phase
    fault_start_s: float = 5.0  # plus a seeded 0-1 s jitter
    fault_s: float = 10.0
    time_scale: float = 20.0
    policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True, slots=True)
class SystemResult:
    system: str
    seed: int
    requests: int  # fault phase
    errors: int  # client-visible, fault phase (steady-phase errors are added too)
    broken_requests: int  # reached B between fault on and heal
    recovery_s: float | None  # heal -> first request at B; None: none before the phase ended
    watched_s: float  # heal -> end of the phase (how long recovery was watched for)
    p50_ms: float  # steady phase, successful requests
    p99_ms: float
    steady_requests: int


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of non-empty `values`."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _summarise(
    system: str,
    seed: int,
    steady: list[Sample],
    faulty: list[Sample],
    times: FaultTimes,
    b_arrivals: list[float],
) -> SystemResult:
    lat = [(s.end - s.start) * 1000 for s in steady if s.ok] or [float("nan")]
    after = [t for t in b_arrivals if t > times.off]
    return SystemResult(
        system=system,
        seed=seed,
        requests=len(faulty),
        errors=sum(not s.ok for s in faulty) + sum(not s.ok for s in steady),
        broken_requests=sum(times.on <= t <= times.off for t in b_arrivals),
        recovery_s=(after[0] - times.off) if after else None,
        watched_s=max(s.end for s in faulty) - times.off,
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        steady_requests=len(steady),
    )


def run_system(
    system: str, scenario: Scenario, ctx: SystemContext, log: Callable[[str], None]
) -> SystemResult:
    """Fresh 2-pod simulator and taps, `system` in front; warm-up, steady phase, fault phase on B."""
    sim_args = ["--pods", "2", "--profile", "tiny", "--time-scale", f"{scenario.time_scale:g}"]
    sim_args += ["--base-port", "0", "--seed", str(ctx.seed)]
    jitter = random.Random(ctx.seed).uniform(0.0, 1.0)
    with SimProcess(sim_args) as sim, TapProcess([u.split("://", 1)[1] for u in sim.urls]) as tap:
        ports = (tap.ports[0], tap.ports[1])
        providers = (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
        with open_system(system, providers, ports, ctx) as target:
            log(f"{system} seed {ctx.seed}: warm-up {scenario.warmup_s:g}s, steady {scenario.steady_s:g}s")
            asyncio.run(run_load(target, scenario.clients, scenario.warmup_s, ctx.seed + 1))
            steady, _ = asyncio.run(
                run_load(target, scenario.steady_clients, scenario.steady_s, ctx.seed + 2)
            )
            fault = Fault(sim.urls[1], scenario.fault_start_s + jitter, scenario.fault_s)
            log(f"{system} seed {ctx.seed}: fault phase {scenario.run_s:g}s, B broken {scenario.fault_s:g}s")
            faulty, times = asyncio.run(
                run_load(target, scenario.clients, scenario.run_s, ctx.seed + 3, fault)
            )
        assert times is not None
        result = _summarise(system, ctx.seed, steady, faulty, times, tap.arrivals(1))
    log(f"  {result}")
    return result
