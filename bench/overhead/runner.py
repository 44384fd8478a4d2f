"""Run the overhead benchmark: one backend, each target in turn, each concurrency level in turn."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from bench.overhead import cpu
from bench.overhead.backend import MODEL, NginxBackend
from bench.overhead.load import LoadResult, WrkLoad, chat_bodies
from bench.overhead.targets import Target


@dataclass(frozen=True)
class OverheadConfig:
    targets: list[Target]
    concurrency: list[int] = field(default_factory=lambda: [1, 16, 64])
    duration_s: int = 10
    warmup_s: int = 2
    pods: int = 4
    users: int = 64  # distinct conversations cycled over
    system_tokens: int = 256
    user_tokens: int = 256


@dataclass(frozen=True)
class Measurement:
    """One target at one concurrency level."""

    target: str
    concurrency: int
    load: LoadResult
    router_cpu_s: float  # CPU of the target's processes while the load ran
    router_cpu_by_process: dict[str, float]  # the same by process name (comm)
    backend_cpu_s: float
    loadgen_cpu_s: float
    loadavg: tuple[float, float, float]  # when the run ended

    def cpu_us_per_request(self, seconds: float) -> float:
        return seconds / self.load.requests * 1e6 if self.load.requests else 0.0


@dataclass
class OverheadResult:
    measurements: list[Measurement] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # target name -> why it did not run


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check_route(base_url: str) -> None:
    """One chat completion through the target must come back 200 with the backend's answer."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 4}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=10, trust_env=False)
    if r.status_code != 200 or r.json().get("object") != "chat.completion":
        raise RuntimeError(f"check request answered {r.status_code}: {r.text[:300]}")


def run_overhead(cfg: OverheadConfig, log: Callable[[str], None] = print) -> OverheadResult:
    """Measure every target at every concurrency against one nginx backend of `cfg.pods` pods."""
    result = OverheadResult()
    load = WrkLoad(chat_bodies(MODEL, cfg.users, cfg.system_tokens, cfg.user_tokens))
    try:
        with NginxBackend(pods=cfg.pods) as backend:
            assert backend.proc is not None
            pgid = backend.proc.pid
            for target in cfg.targets:
                log(f"target {target.name}")
                try:
                    with target.open(backend.urls) as base_url:
                        check_route(base_url)
                        if cfg.warmup_s > 0:
                            load.run(base_url, max(cfg.concurrency), cfg.warmup_s)
                        for concurrency in cfg.concurrency:
                            m = _measure(load, target.name, base_url, concurrency, cfg.duration_s, pgid)
                            log(
                                f"  c={concurrency}: {m.load.rps:,.0f} req/s, p50 {m.load.p50_ms:.2f} ms, "
                                f"p99 {m.load.p99_ms:.2f} ms, errors {m.load.errors}"
                            )
                            result.measurements.append(m)
                except Exception as exc:  # one broken target must not lose the others' figures
                    result.failures[target.name] = f"{type(exc).__name__}: {exc}"[:500]
                    log(f"  failed: {result.failures[target.name]}")
    finally:
        load.close()
    return result


def _measure(
    load: WrkLoad, name: str, base_url: str, concurrency: int, duration_s: int, backend_pgid: int
) -> Measurement:
    before, loadgen_before = cpu.sample(backend_pgid), _children_cpu_s()
    outcome = load.run(base_url, concurrency, duration_s)
    loadgen_cpu = _children_cpu_s() - loadgen_before
    spent = cpu.sample(backend_pgid).minus(before)
    return Measurement(
        name,
        concurrency,
        outcome,
        router_cpu_s=spent.router_s,
        router_cpu_by_process=spent.router_by_comm,
        backend_cpu_s=spent.backend_s,
        loadgen_cpu_s=loadgen_cpu,
        loadavg=os.getloadavg(),
    )
