"""Microbenchmark: latency of one full scheduling decision, by prompt size and pool size.

Each decision is `Scheduler.schedule` with a built-in strategy (default: the default strategy) over a
datastore of fake pods, followed by the profile's PreRequest hooks as the request director runs them before
forwarding (the prefix scorer's index insert, the prefill backlog's add). Requests share a
per-"conversation" prefix (about three quarters of the prompt) followed by a unique tail, so the prefix
index sees partial hits as in real traffic. Building the request is outside the timed region; reading the
datastore is inside.

Requests end, as in a steady state: each counts as in flight on its pod (the datastore's count) until
`--in-flight-per-pod` x pods later decisions have been made, then gets its first token and completes
through the profile's hooks, untimed (0: requests never end, so in-flight counts stay 0 and the prefill
backlog only drains with time).

    python -m bench.sched_microbench [--strategy NAME] [--in-flight-per-pod N] [--iterations N]
        [--markdown PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import string
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from epp.config import DEFAULT_STRATEGY, RoutingStrategy, builtin_strategy, parse_strategy
from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.scheduling.builder import build_scheduler
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import AttemptReport, LLMRequest, SchedulingResult
from scorers.builtin import default_registry

PROMPT_CHARS = (1_000, 8_000, 32_000)
POD_COUNTS = (8, 64, 256)
CONVERSATIONS = 64  # distinct shared prefixes in the workload
DEFAULT_IN_FLIGHT_PER_POD = 2
SHARED_FRACTION = 0.75


@dataclass(frozen=True, slots=True)
class Cell:
    prompt_chars: int
    pods: int
    p50_us: float
    p99_us: float
    mean_us: float
    iterations: int


def make_datastore(pods: int, rng: random.Random) -> Datastore:
    ds = Datastore(staleness_s=1e9)  # snapshots never go stale during the run
    ds.set_endpoints([Endpoint(f"pod-{i:03d}", "127.0.0.1", 10_000 + i) for i in range(pods)])
    now = time.monotonic()
    for i in range(pods):
        ds.update_metrics(
            f"pod-{i:03d}",
            MetricsSnapshot(
                waiting=rng.randrange(0, 4),
                running=rng.randrange(0, 16),
                kv_cache_usage=rng.uniform(0.0, 0.7),
                block_size=16,
                num_gpu_blocks=8_192,
                scraped_at=now,
            ),
        )
    return ds


def random_text(rng: random.Random, vocabulary: Sequence[str], chars: int) -> str:
    return " ".join(rng.choices(vocabulary, k=chars // 4 + 1))[:chars]


class Workload:
    """Prompts of one size: a shared prefix per conversation plus a tail unique to each request."""

    def __init__(self, rng: random.Random, chars: int) -> None:
        self.rng = rng
        self.chars = chars
        shared = int(chars * SHARED_FRACTION)
        vocabulary = [
            "".join(rng.choices(string.ascii_lowercase, k=rng.randrange(2, 9))) for _ in range(4096)
        ]
        self.prefixes = [random_text(rng, vocabulary, shared) for _ in range(CONVERSATIONS)]
        self.tail_source = random_text(rng, vocabulary, chars * 4)
        self.counter = 0

    def next_request(self) -> LLMRequest:
        self.counter += 1
        prefix = self.prefixes[self.rng.randrange(CONVERSATIONS)]
        tail_len = self.chars - len(prefix)
        start = self.rng.randrange(len(self.tail_source) - tail_len)
        tail = f"{self.counter:012d}" + self.tail_source[start : start + tail_len - 12]
        rid = f"bench-{self.counter}"
        return LLMRequest(request_id=rid, model="m", target_model="m", prompt=prefix + tail)


def decide(scheduler: Scheduler, request: LLMRequest) -> SchedulingResult:
    """One decision as the director makes it: schedule, then the before-request hooks."""
    result = scheduler.schedule(request)
    ctx, endpoint = result.context, result.endpoint
    for hook in scheduler.profile(result.profile).pre_requests:
        hook.pre_request(ctx, endpoint)
    return result


class InFlight:
    """The decided requests still in flight: the oldest ends (first token, completion) when over `limit`."""

    def __init__(self, scheduler: Scheduler, datastore: Datastore, limit: int) -> None:
        self.scheduler, self.datastore, self.limit = scheduler, datastore, limit
        self.open: deque[SchedulingResult] = deque()

    def sent(self, result: SchedulingResult) -> None:
        if self.limit <= 0:
            return
        self.datastore.acquire(result.endpoint.name)
        self.open.append(result)
        if len(self.open) > self.limit:
            self.end(self.open.popleft())

    def end(self, result: SchedulingResult) -> None:
        ctx, endpoint = result.context, result.endpoint
        profile = self.scheduler.profile(result.profile)
        for hook in profile.first_tokens:
            hook.first_token(ctx, endpoint, 0.1)
        tokens = len(ctx.request.prompt) // 4
        report = AttemptReport(
            endpoint, status=200, responded=True, prompt_tokens=tokens, completion_tokens=50
        )
        for complete in profile.response_completes:
            complete.response_complete(ctx, report)
        self.datastore.release(endpoint.name)


def measure(
    strategy: RoutingStrategy,
    prompt_chars: int,
    pods: int,
    iterations: int,
    warmup: int,
    seed: int,
    in_flight_per_pod: int = DEFAULT_IN_FLIGHT_PER_POD,
) -> Cell:
    rng = random.Random(seed)
    config = builtin_strategy(strategy)
    datastore = make_datastore(pods, rng)
    scheduler: Scheduler = build_scheduler(config, datastore, default_registry(), rng)
    in_flight = InFlight(scheduler, datastore, in_flight_per_pod * pods)
    work = Workload(rng, prompt_chars)
    for _ in range(warmup):  # warms the prefix index: every conversation lands on some pod
        in_flight.sent(decide(scheduler, work.next_request()))
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        req = work.next_request()
        t0 = clock()
        result = decide(scheduler, req)
        samples.append((clock() - t0) / 1_000)
        in_flight.sent(result)
    samples.sort()
    p99 = samples[min(len(samples) - 1, round(0.99 * len(samples)) - 1)]
    return Cell(prompt_chars, pods, statistics.median(samples), p99, statistics.fmean(samples), iterations)


def markdown_table(cells: Sequence[Cell]) -> str:
    lines = [
        "| prompt chars | pods | p50 (µs) | p99 (µs) | mean (µs) | iterations |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c.prompt_chars:,} | {c.pods} | {c.p50_us:.0f} | {c.p99_us:.0f} | {c.mean_us:.0f}"
            f" | {c.iterations} |"
        )
    return "\n".join(lines) + "\n"


def machine_description() -> str:
    """CPU count and model, Python version and load average, for the record next to the numbers."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, load average {load}"


def int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(","))
    if not values or min(values) < 1:
        raise ValueError(text)
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sched_microbench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--iterations", type=int, default=2_000, help="timed decisions per cell")
    parser.add_argument(
        "--warmup", type=int, default=500, help="untimed decisions per cell, warming the index"
    )
    parser.add_argument("--prompt-chars", type=int_list, default=PROMPT_CHARS, help="e.g. 1000,8000,32000")
    parser.add_argument("--pods", type=int_list, default=POD_COUNTS, help="e.g. 8,64,256")
    parser.add_argument("--strategy", type=parse_strategy, default=DEFAULT_STRATEGY)
    parser.add_argument(
        "--in-flight-per-pod",
        type=int,
        default=DEFAULT_IN_FLIGHT_PER_POD,
        help="requests in flight per pod before the oldest ends (0: none ever ends)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown to PATH")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.in_flight_per_pod < 0:
        parser.error("--iterations must be >= 1, --warmup and --in-flight-per-pod >= 0")
    print(
        f"strategy: {args.strategy.value}; in flight per pod: {args.in_flight_per_pod}; "
        f"machine: {machine_description()}",
        flush=True,
    )
    cells = []
    for chars in args.prompt_chars:
        for pods in args.pods:
            cell = measure(
                args.strategy, chars, pods, args.iterations, args.warmup, args.seed, args.in_flight_per_pod
            )
            cells.append(cell)
            print(
                f"{chars:>7,} chars x {pods:>3} pods: p50 {cell.p50_us:8.1f} µs  p99 {cell.p99_us:8.1f} µs"
                f"  mean {cell.mean_us:8.1f} µs",
                flush=True,
            )
    table = markdown_table(cells)
    print(f"after: {machine_description()}")
    print()
    print(table, end="")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
