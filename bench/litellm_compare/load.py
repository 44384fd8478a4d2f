"""Closed-loop chat-completion load with an optional fault window on one provider."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True, slots=True)
class Target:
    """Where clients send: one of `urls` per request (seeded choice), with these headers and model."""

    urls: Sequence[str]
    model: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sample:
    start: float  # time.monotonic()
    end: float
    status: int  # HTTP status; 0 for a transport error or timeout

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Fault:
    """Make `pod_url` answer 503 from `start_s` to `start_s + length_s` into the phase."""

    pod_url: str
    start_s: float
    length_s: float


@dataclass(frozen=True, slots=True)
class FaultTimes:
    on: float  # monotonic time the fault request was sent
    off: float  # monotonic time the heal request returned


async def _set_fault(pod_url: str, mode: str) -> None:
    """POST the pod's fault mode on a fresh connection (one retry: a pod may drop an idle one)."""
    for attempt in range(2):
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.post(f"{pod_url}/sim/fault", json={"mode": mode}) as resp,
            ):
                resp.raise_for_status()
                return
        except aiohttp.ClientOSError:
            if attempt:
                raise


async def _fault_window(fault: Fault, t0: float) -> FaultTimes:
    await asyncio.sleep(max(0.0, t0 + fault.start_s - time.monotonic()))
    on = time.monotonic()
    await _set_fault(fault.pod_url, "error")
    await asyncio.sleep(max(0.0, on + fault.length_s - time.monotonic()))
    await _set_fault(fault.pod_url, "none")
    return FaultTimes(on, time.monotonic())


async def _client(
    session: aiohttp.ClientSession, target: Target, rng: random.Random, tag: str, deadline: float
) -> list[Sample]:
    samples: list[Sample] = []
    n = 0
    while (start := time.monotonic()) < deadline:
        body = {
            "model": target.model,
            "messages": [{"role": "user", "content": f"{tag} request {n}: say hello"}],
            "max_tokens": 8,
        }
        url = rng.choice(target.urls)
        try:
            async with session.post(url, json=body, headers=dict(target.headers)) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError):
            status = 0
        samples.append(Sample(start, time.monotonic(), status))
        n += 1
    return samples


async def run_load(
    target: Target, clients: int, duration_s: float, seed: int, fault: Fault | None = None
) -> tuple[list[Sample], FaultTimes | None]:
    """`clients` closed-loop clients for `duration_s`; the samples and, with a fault, when it was on."""
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=clients + 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False) as session:
        t0 = time.monotonic()
        deadline = t0 + duration_s
        tasks = [
            _client(session, target, random.Random(rng.random()), f"seed {seed} client {i}", deadline)
            for i in range(clients)
        ]
        fault_task = asyncio.ensure_future(_fault_window(fault, t0)) if fault else None
        results = await asyncio.gather(*tasks)
        times = await fault_task if fault_task is not None else None
    return [s for r in results for s in r], times
