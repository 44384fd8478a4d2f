"""Markdown report of an overhead run: per target and concurrency, throughput, latency, added latency over
the direct baseline, the router's CPU per request, and ratios against a baseline router of the same run."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from bench.overhead.runner import Measurement, OverheadResult


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc={os.cpu_count()}, CPU: {cpu_model()}, load average at the end: {load}"


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "-"


def format_table(result: OverheadResult, baseline: str | None) -> str:
    """The results table; ratio columns compare with `baseline` at the same concurrency (when it ran)."""
    direct = {m.concurrency: m for m in result.measurements if m.target == "direct"}
    base = {m.concurrency: m for m in result.measurements if m.target == baseline}
    label = baseline or "baseline"
    rows = [
        "| target | conc. | req/s | p50 ms | p99 ms | +p50 ms vs direct | +p99 ms vs direct "
        f"| router CPU µs/req | req/s ÷ {label} | CPU/req ÷ {label} | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in result.measurements:
        rows.append(_row(m, direct.get(m.concurrency), base.get(m.concurrency)))
    lines = rows
    for name, why in result.failures.items():
        lines.append(f"\n{name} did not run: {why}")
    return "\n".join(lines)


def _row(m: Measurement, direct: Measurement | None, base: Measurement | None) -> str:
    added_p50 = f"{m.load.p50_ms - direct.load.p50_ms:+.2f}" if direct and m.target != "direct" else "-"
    added_p99 = f"{m.load.p99_ms - direct.load.p99_ms:+.2f}" if direct and m.target != "direct" else "-"
    router_cpu = m.cpu_us_per_request(m.router_cpu_s)
    base_cpu = base.cpu_us_per_request(base.router_cpu_s) if base else None
    cpu_ratio = _ratio(router_cpu, base_cpu) if m.target != "direct" else "-"
    return (
        f"| {m.target} | {m.concurrency} | {m.load.rps:,.0f} | {m.load.p50_ms:.2f} | {m.load.p99_ms:.2f} "
        f"| {added_p50} | {added_p99} | {router_cpu:,.0f} "
        f"| {_ratio(m.load.rps, base.load.rps if base else None)} | {cpu_ratio} | {m.load.errors} |"
    )


def format_report(result: OverheadResult, baseline: str | None, command: str) -> str:
    """The whole Markdown report: command, machine, table, and the CPU split of each run."""
    cpu_rows = [
        "| target | conc. | router CPU s | by process | backend (nginx) CPU s | load generator (wrk) CPU s "
        "| load avg (1 min) |",
        "|---|--:|--:|---|--:|--:|--:|",
    ]
    for m in result.measurements:
        by_process = ", ".join(
            f"{comm} {s:.2f}" for comm, s in sorted(m.router_cpu_by_process.items(), key=lambda kv: -kv[1])
        )
        cpu_rows.append(
            f"| {m.target} | {m.concurrency} | {m.router_cpu_s:.2f} | {by_process or '-'} "
            f"| {m.backend_cpu_s:.2f} | {m.loadgen_cpu_s:.2f} | {m.loadavg[0]:.2f} |"
        )
    return "\n\n".join(
        [
            f"Command: `{command}`",
            f"Machine: {machine_line()}",
            format_table(result, baseline),
            "CPU seconds spent during each run:",
            "\n".join(cpu_rows),
        ]
    )
