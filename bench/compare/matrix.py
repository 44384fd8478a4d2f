"""The workload matrix: every workload x every variant x several seeds, each run on a fresh fleet.

Runs go in rounds: round k runs every variant once with seed k, so a drift in the machine's load over the
matrix touches every variant alike. Each run gets cold caches: a new `epp sim` fleet, or with `endpoints`
(real pods) `POST /reset_prefix_cache` on every pod, and where a pod refuses, a salt unique to the run that
opens every prompt so no run can reuse another's cached blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.compare.cold_caches import reset_prefix_caches, run_salt
from bench.compare.frontends import fleet_kv_args, prediction_change, scrape_prediction, start_frontend
from bench.compare.pod_metrics import deltas, scrape_pods
from bench.compare.report import Row, make_row
from bench.compare.variants import Variant
from bench.cpu_pinning import off_pod_cpus
from bench.multi_round_qa import Summary, run_benchmark
from bench.sim.process import SimProcess
from bench.sim.profiles import get_profile
from bench.workloads.catalog import SCALES, BuildContext, Plan, Workload
from bench.workloads.schedule import run_schedule

FRESH_FLEET = "fresh simulated fleet"
RESET = "POST /reset_prefix_cache"
SALTED = "per-run salt (a pod refused /reset_prefix_cache)"
# The name of a run's CSV (run_csv), read back.
RUN_CSV = re.compile(r"^(?P<slug>.+)-run(?P<run>\d+)-seed(?P<seed>-?\d+)\.csv$")


@dataclass(frozen=True)
class MatrixSpec:
    """The matrix to run. `endpoints` (pod root URLs) replaces the fresh simulated fleet of each run."""

    workloads: Sequence[Workload]
    variants: Sequence[Variant]
    seeds: Sequence[int]
    output_dir: Path
    scale: str = "small"
    pods: int = 4
    profile: str = "qwen2.5-7b-a10"
    time_scale: float = 2.0
    model: str | None = None
    endpoints: Sequence[str] | None = None
    attempts: int = 2
    duration_s: float | None = None  # replaces the scale's duration (simulated s of arrivals)
    pod_cpus: frozenset[int] | None = None  # the simulated fleet on these CPUs, the rest of the run off them

    @property
    def duration(self) -> float:
        return self.duration_s if self.duration_s is not None else SCALES[self.scale]

    @property
    def model_name(self) -> str:
        return self.model or get_profile(self.profile).model


@dataclass(frozen=True)
class RunResult:
    """One run of one variant on one workload: its figures, the workload's parameters, how caches got cold."""

    workload: str
    variant: Variant
    run: int
    seed: int
    row: Row
    params: dict[str, Any]
    cold_caches: str
    wall_seconds: float
    attempts: int = 1


def sim_args(spec: MatrixSpec, workload: Workload, seed: int, variant: Variant | None = None) -> list[str]:
    """`epp sim` flags of a run's fleet: the spec's pods and profile, the workload's adapters, the seed,
    and KV events when the variant's picker follows them."""
    args = ["--pods", str(spec.pods), "--base-port", "0", "--profile", spec.profile]
    args += ["--time-scale", str(spec.time_scale), "--seed", str(seed)]
    if variant is not None:
        args += fleet_kv_args(variant)
    if workload.lora_modules:
        args += ["--lora-modules", *workload.lora_modules, "--max-loras", str(workload.max_loras)]
    return args


@contextlib.contextmanager
def cold_fleet(
    spec: MatrixSpec, workload: Workload, variant: Variant, run: int, seed: int
) -> Iterator[tuple[list[str], str, str]]:
    """The run's pods with cold caches: yields (pod root URLs, salt, how the caches were made cold)."""
    if spec.endpoints is None:
        with SimProcess(sim_args(spec, workload, seed, variant), cpus=spec.pod_cpus) as sim:
            yield list(sim.urls), "", FRESH_FLEET
        return
    urls = list(spec.endpoints)
    if reset_prefix_caches(urls):
        yield urls, "", RESET
    else:
        yield urls, run_salt(workload.name, variant.name, run, time.time()), SALTED


async def _send(plan: Plan, base_urls: list[str], csv: Path, time_scale: float, model: str) -> Summary:
    if plan.multi_round is not None:
        cfg = plan.multi_round.model_copy(
            update={"base_urls": tuple(base_urls), "output": csv, "time_scale": time_scale}
        )
        return (await run_benchmark(cfg, console=Console(quiet=True))).summary
    assert plan.schedule is not None
    return (await run_schedule(plan.schedule, base_urls, model, time_scale, csv)).summary


def run_csv(output_dir: Path, workload: str, slug: str, run: int, seed: int) -> Path:
    """Where a run's per-request CSV goes (RUN_CSV reads the name back)."""
    return output_dir / workload / f"{slug}-run{run}-seed{seed}.csv"


def run_one(spec: MatrixSpec, workload: Workload, variant: Variant, run: int, seed: int) -> RunResult:
    """Fleet, front end, the workload through it, the pods' counters before and after."""
    csv = run_csv(spec.output_dir, workload.name, variant.slug, run, seed)
    started = time.perf_counter()
    with (
        cold_fleet(spec, workload, variant, run, seed) as (pod_urls, salt, cold),
        start_frontend(variant, pod_urls, seed) as frontend,
    ):
        ctx = BuildContext(spec.duration, seed, salt, spec.model_name, get_profile(spec.profile))
        plan = workload.build(ctx)
        before, predicted_before = scrape_pods(pod_urls), scrape_prediction(frontend)
        summary = asyncio.run(_send(plan, frontend.base_urls, csv, spec.time_scale, spec.model_name))
        after, predicted_after = scrape_pods(pod_urls), scrape_prediction(frontend)
    prediction = prediction_change(predicted_before, predicted_after)
    row = make_row(variant.name, variant.kind.value, summary, deltas(before, after), prediction)
    wall = time.perf_counter() - started
    return RunResult(workload.name, variant, run, seed, row, plan.params, cold, wall)


def _run_with_retry(
    spec: MatrixSpec, workload: Workload, variant: Variant, run: int, seed: int, console: Console
) -> RunResult:
    """A run, once more when its fleet or front end failed to start (a long matrix should not die of one
    flaky start); the second failure propagates. The result counts its attempts."""
    for attempt in range(1, spec.attempts + 1):
        try:
            result = run_one(spec, workload, variant, run, seed)
        except (RuntimeError, TimeoutError) as exc:
            if attempt == spec.attempts:
                raise
            console.print(f"[yellow]run failed to start ({str(exc).splitlines()[0]}); retrying[/]")
            time.sleep(2.0)
            continue
        return dataclasses.replace(result, attempts=attempt)
    raise AssertionError("unreachable")


def run_matrix(
    spec: MatrixSpec,
    console: Console | None = None,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every workload, then every seed, then every variant; `on_result` sees each run as it finishes."""
    console = console or Console()
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    total = len(spec.workloads) * len(spec.seeds) * len(spec.variants)
    # With pod CPUs: this process (the load generator) and what it starts besides the fleet (the front
    # ends, the peers) run on the other CPUs.
    with off_pod_cpus(spec.pod_cpus):
        for workload in spec.workloads:
            (spec.output_dir / workload.name).mkdir(exist_ok=True)
            for run, seed in enumerate(spec.seeds, start=1):
                for variant in spec.variants:
                    console.print(
                        f"[{len(results) + 1}/{total}] {workload.name} / {variant.name} / run {run} "
                        f"(seed {seed})"
                    )
                    result = _run_with_retry(spec, workload, variant, run, seed, console)
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    return results
