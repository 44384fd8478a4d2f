"""Runs the multi-round QA workload against OpenAI-compatible servers: `run_benchmark(cfg)`."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from bench.multi_round_qa.client import STATUS_CANCELLED, ChatClient, RequestRecord, SimClock
from bench.multi_round_qa.config import BenchConfig
from bench.multi_round_qa.pacing import step_interval
from bench.multi_round_qa.session import LaunchOrder, SessionManager
from bench.multi_round_qa.sharegpt import load_sharegpt
from bench.multi_round_qa.summary import Summary, format_summary, summarize, write_csv


@dataclass
class BenchResult:
    """Per-request records (launch order) and the summary over the whole run, in simulated seconds."""

    config: BenchConfig
    records: list[RequestRecord]
    summary: Summary
    duration: float


async def _send_and_report(
    client: ChatClient, manager: SessionManager, order: LaunchOrder, record: RequestRecord
) -> None:
    await client.send(order, record.base_url, record)
    if record.ok:
        manager.on_answer(order.user_id, record.answer)
    else:
        manager.on_failure(order.user_id)


def _progress(cfg: BenchConfig, console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]multi-round QA"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s" if cfg.time else "{task.completed:.0f} s"),
        TextColumn("{task.description}"),
        console=console,
        disable=not cfg.show_progress,
    )


async def run_benchmark(
    cfg: BenchConfig, stop: asyncio.Event | None = None, console: Console | None = None
) -> BenchResult:
    """Run until `cfg.time` simulated seconds have passed or `stop` is set, then cancel what is in flight.

    Request failures are recorded with their status; they never raise. Raises ShareGPTError for a bad
    `cfg.sharegpt` file before anything is sent.
    """
    console = console or Console()
    sharegpt = load_sharegpt(cfg.sharegpt) if cfg.sharegpt is not None else None
    manager = SessionManager(cfg, sharegpt)
    urls = itertools.cycle(cfg.base_urls)
    records: list[RequestRecord] = []
    tasks: set[asyncio.Task[None]] = set()
    pause = step_interval(cfg.num_users, cfg.num_rounds, cfg.qps, cfg.time_scale)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=cfg.request_timeout, limits=limits) as http:
        clock = SimClock(cfg.time_scale)
        client = ChatClient(http, cfg.model, clock, cfg.api_key, cfg.request_with_user_id)
        with _progress(cfg, console) as progress:
            bar = progress.add_task("", total=cfg.time)
            last_log = 0.0
            while True:
                now = clock.now()
                if (cfg.time is not None and now >= cfg.time) or (stop is not None and stop.is_set()):
                    break
                for order in manager.step(now):
                    record = RequestRecord(order.user_id, order.round, next(urls), launch_time=now)
                    records.append(record)
                    task = asyncio.create_task(_send_and_report(client, manager, order, record))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if now - last_log >= cfg.log_interval:
                    window = summarize(records, last_log, now, manager.in_flight, cfg.qps)
                    progress.console.print(format_summary(window))
                    last_log = now
                done = len(records) - len(tasks)
                progress.update(
                    bar,
                    completed=now,
                    description=f"{done} done, {len(tasks)} in flight, {len(manager.sessions)} users",
                )
                await asyncio.sleep(pause)
            end = clock.now()
            on_the_fly = len(tasks)
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    for record in records:
        if record.finish_time is None:
            record.status = STATUS_CANCELLED
    summary = summarize(records, 0.0, end, on_the_fly, cfg.qps)
    if cfg.output is not None:
        write_csv(records, cfg.output)
    return BenchResult(cfg, records, summary, end)
