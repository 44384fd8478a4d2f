"""Markdown tables: median [min-max] over seeds per system, and every run."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from bench.litellm_compare.scenario import SystemResult


def _spread(values: Sequence[float | None], fmt: str) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "never"
    text = f"{statistics.median(known):{fmt}}"
    if len(known) > 1:
        text += f" [{min(known):{fmt}}–{max(known):{fmt}}]"
    if len(known) < len(values):
        text += f" ({len(values) - len(known)} never)"
    return text


def _added(
    runs: Sequence[SystemResult], direct: dict[int, SystemResult], key: Callable[[SystemResult], float]
) -> list[float | None]:
    return [key(r) - key(direct[r.seed]) if r.seed in direct else None for r in runs]


def format_report(results: Sequence[SystemResult], skipped: dict[str, str]) -> str:
    direct = {r.seed: r for r in results if r.system == "direct"}
    systems = list(dict.fromkeys(r.system for r in results))
    lines = [
        "| system | client-visible errors | requests to broken provider | recovery time s "
        "| added p50 ms | added p99 ms | p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        runs = [r for r in results if r.system == system]
        p50 = (
            "0 (baseline)" if system == "direct" else _spread(_added(runs, direct, lambda r: r.p50_ms), ".1f")
        )
        p99 = (
            "0 (baseline)" if system == "direct" else _spread(_added(runs, direct, lambda r: r.p99_ms), ".1f")
        )
        absolute = f"{_spread([r.p50_ms for r in runs], '.1f')} / {_spread([r.p99_ms for r in runs], '.1f')}"
        lines.append(
            f"| {system} | {_spread([r.errors for r in runs], '.0f')} | "
            f"{_spread([r.broken_requests for r in runs], '.0f')} | "
            f"{_spread([r.recovery_s for r in runs], '.2f')} | {p50} | {p99} | {absolute} |"
        )
    for system, why in skipped.items():
        lines.append(f"| {system} | not run: {why} | | | | | |")
    lines += [
        "",
        "| system | seed | requests (fault phase) | errors | to broken B | recovery s | p50 ms | p99 ms |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        rec = f"never (> {r.watched_s:.1f})" if r.recovery_s is None else f"{r.recovery_s:.2f}"
        lines.append(
            f"| {r.system} | {r.seed} | {r.requests} | {r.errors} | {r.broken_requests} | {rec} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} |"
        )
    return "\n".join(lines) + "\n"
