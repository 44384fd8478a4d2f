"""Open-loop workloads: requests sent at fixed times whatever the answers, and the runner that replays them.

Multi-round QA (bench.multi_round_qa) is closed-loop: a round waits for the previous answer. The other
workloads of the matrix (random prompts, documents, trace replay, bursts) are lists of independent requests
with arrival times, built ahead of the run from a seed, so every variant receives exactly the same requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.multi_round_qa.client import STATUS_CANCELLED, ChatClient, RequestRecord, SimClock
from bench.multi_round_qa.prompts import ChatMessage
from bench.multi_round_qa.session import LaunchOrder
from bench.multi_round_qa.summary import Summary, summarize, write_csv

# Simulated seconds to wait for the answers in flight after the last arrival, before cancelling them.
DEFAULT_DRAIN_S = 300.0


@dataclass(frozen=True)
class ScheduledRequest:
    """One request of an open-loop workload: sent `at` simulated seconds after the run's start.

    `user_id` groups requests that belong together (a document, a trace session) in the CSV; `model` None
    means the run's model (a LoRA workload names an adapter).
    """

    at: float
    user_id: int
    messages: list[ChatMessage]
    max_tokens: int
    model: str | None = None


@dataclass
class ScheduleResult:
    """The run's records (in schedule order), summary, and duration in simulated seconds."""

    records: list[RequestRecord]
    summary: Summary
    duration: float


def offered_rate(requests: Sequence[ScheduledRequest]) -> float:
    """Requests per simulated second over the schedule's span (0 for fewer than two requests)."""
    if len(requests) < 2:
        return 0.0
    span = requests[-1].at - requests[0].at
    return (len(requests) - 1) / span if span > 0 else 0.0


async def run_schedule(
    requests: Sequence[ScheduledRequest],
    base_urls: Sequence[str],
    model: str,
    time_scale: float = 1.0,
    output: Path | None = None,
    api_key: str = "EMPTY",
    request_timeout: float = 600.0,
    drain_s: float = DEFAULT_DRAIN_S,
) -> ScheduleResult:
    """Send each request at its time (base URLs in turn), wait for the answers, summarise.

    Requests still unanswered `drain_s` simulated seconds after the last arrival are cancelled (and counted
    as cancelled, not failed). Failures are recorded with their status; they never raise.
    """
    ordered = sorted(requests, key=lambda r: r.at)
    records: list[RequestRecord] = []
    tasks: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=request_timeout, limits=limits) as http:
        clock = SimClock(time_scale)
        client = ChatClient(http, model, clock, api_key)
        for i, request in enumerate(ordered):
            delay = clock.wall_seconds(request.at - clock.now())
            if delay > 0:
                await asyncio.sleep(delay)
            url = base_urls[i % len(base_urls)]
            record = RequestRecord(request.user_id, i + 1, url, launch_time=clock.now())
            records.append(record)
            order = LaunchOrder(request.user_id, i + 1, request.messages, request.max_tokens, request.model)
            tasks.append(asyncio.create_task(client.send(order, url, record)))
        _, pending = await asyncio.wait(tasks, timeout=clock.wall_seconds(drain_s)) if tasks else ((), ())
        on_the_fly = len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        end = clock.now()
    for record in records:
        if record.finish_time is None:
            record.status = STATUS_CANCELLED
    summary = summarize(records, 0.0, end, on_the_fly, offered_rate(ordered))
    if output is not None:
        write_csv(records, output)
    return ScheduleResult(records, summary, end)
