"""Run the same multi-round QA workload once per variant, each on a fresh simulated fleet."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.compare.cold_caches import reset_prefix_caches, run_salt
from bench.compare.frontends import fleet_kv_args, prediction_change, scrape_prediction, start_frontend
from bench.compare.picker_metrics import Prediction
from bench.compare.pod_metrics import PodCounters, deltas, scrape_pods
from bench.compare.variants import Variant
from bench.cpu_pinning import off_pod_cpus
from bench.multi_round_qa import BenchConfig, BenchResult, run_benchmark
from bench.sim.process import SimProcess


@dataclass(frozen=True)
class CompareSpec:
    """A comparison: the workload (its base URLs are replaced per variant) and where it runs.

    With `endpoints` (pod root URLs) the variants share those pods, in turn, each starting with cold
    caches (`POST /reset_prefix_cache`, or where a pod refuses it, prompts salted per variant); otherwise
    each variant gets a fresh `epp sim` fleet of `pods` pods with the same profile and seed.
    """

    workload: BenchConfig
    variants: Sequence[Variant]
    output_dir: Path
    pods: int = 4
    profile: str = "qwen2.5-7b-a10"
    time_scale: float = 1.0
    seed: int = 0
    endpoints: Sequence[str] | None = None
    pod_cpus: frozenset[int] | None = None  # the simulated fleet on these CPUs, the rest of the run off them


@dataclass
class VariantResult:
    """One variant's run: the client's records and summary, and per-pod counter changes over the run."""

    variant: Variant
    bench: BenchResult
    pods: list[PodCounters]
    csv: Path
    wall_seconds: float
    prediction: Prediction | None = None


@contextlib.contextmanager
def pod_fleet(spec: CompareSpec, variant: Variant) -> Iterator[list[str]]:
    """The given endpoints, or a fresh `epp sim` fleet on free ports (publishing KV events when the variant
    follows them); yields the pods' root URLs."""
    if spec.endpoints is not None:
        yield list(spec.endpoints)
        return
    args = ["--pods", str(spec.pods), "--base-port", "0", "--profile", spec.profile]
    args += ["--time-scale", str(spec.time_scale), "--seed", str(spec.seed), *fleet_kv_args(variant)]
    with SimProcess(args, cpus=spec.pod_cpus) as sim:
        yield list(sim.urls)


def run_variant(spec: CompareSpec, variant: Variant, console: Console) -> VariantResult:
    """Start the fleet and the variant's front end, run the workload through it, scrape the pods."""
    csv = spec.output_dir / f"{variant.slug}.csv"
    with pod_fleet(spec, variant) as pod_urls, start_frontend(variant, pod_urls, spec.seed) as frontend:
        update: dict[str, object] = {"base_urls": tuple(frontend.base_urls), "output": csv}
        if spec.endpoints is not None and not reset_prefix_caches(pod_urls):
            update["salt"] = run_salt("compare", variant.name, spec.seed, time.time())
        before, predicted_before = scrape_pods(pod_urls), scrape_prediction(frontend)
        cfg = spec.workload.model_copy(update=update)
        started = time.perf_counter()
        bench = asyncio.run(run_benchmark(cfg, console=console))
        wall = time.perf_counter() - started
        after, predicted_after = scrape_pods(pod_urls), scrape_prediction(frontend)
    prediction = prediction_change(predicted_before, predicted_after)
    return VariantResult(variant, bench, deltas(before, after), csv, wall, prediction)


def run_comparison(
    spec: CompareSpec,
    console: Console | None = None,
    on_result: Callable[[VariantResult], None] | None = None,
) -> list[VariantResult]:
    """Run every variant in turn; `on_result` sees each result as soon as it is in."""
    console = console or Console()
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with off_pod_cpus(spec.pod_cpus):
        for variant in spec.variants:
            console.rule(f"{variant.name} ({variant.kind.value})")
            result = run_variant(spec, variant, console)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
