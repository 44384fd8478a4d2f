"""The matrix's JSON document and Markdown tables: per workload, each variant's median [min-max]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from bench.compare.matrix import RunResult
from bench.compare.matrix_stats import FIGURES, Cell, Spread, cell_of, hit_gap, median_ratio, share_ratio
from bench.compare.report import finite
from bench.compare.variants import baseline_name
from bench.workloads.catalog import WORKLOADS

TTFTS = ("mean_ttft", "p90_ttft", "p99_ttft")


def cells_by_workload(results: Sequence[RunResult]) -> dict[str, list[Cell]]:
    """Workload -> its cells, in the order the workloads and variants first ran."""
    groups: dict[str, dict[str, list[RunResult]]] = {}
    for r in results:
        groups.setdefault(r.workload, {}).setdefault(r.variant.name, []).append(r)
    return {
        workload: [
            cell_of(workload, name, runs[0].variant.kind.value, [(r.seed, r.row) for r in runs])
            for name, runs in variants.items()
        ]
        for workload, variants in groups.items()
    }


def _value(name: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    if name in TTFTS:
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if name in ("hit_rate", "predicted_hit"):
        return f"{value * 100:.1f}%"
    if name == "hit_gap":
        return f"{value * 100:+.1f} pt"
    if name in ("finished", "failed"):
        return f"{value:.0f}"
    return f"{value:.2f}"


def spread_text(name: str, spread: Spread) -> str:
    """`median [min–max]`, or just the value for a single run."""
    if spread.runs <= 1 or spread.low == spread.high:
        return _value(name, spread.median)
    return f"{_value(name, spread.median)} [{_value(name, spread.low)}–{_value(name, spread.high)}]"


def _cell_text(cell: Cell, base: Cell, name: str, lower: bool) -> str:
    text = spread_text(name, cell.figures[name])
    if cell is base or name not in (*TTFTS, "throughput"):
        return text
    factor = median_ratio(cell, base, name, lower)
    return text if math.isnan(factor) else f"{text} ×{factor:.2f}"


def markdown_table(cells: Sequence[Cell]) -> str:
    """One workload's table; ×N after a median = N times better than the baseline's median."""
    base_name = baseline_name([c.variant for c in cells])
    base = next(c for c in cells if c.variant == base_name)
    header = ["variant", "runs", "ok", "failed", *(label for _, label, _ in FIGURES)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for cell in cells:
        cells_text = [
            cell.variant,
            str(len(cell.seeds)),
            _value("finished", cell.finished.median),
            _value("failed", cell.failed.median),
            *(_cell_text(cell, base, name, lower) for name, _, lower in FIGURES),
        ]
        lines.append("| " + " | ".join(cells_text) + " |")
    return "\n".join(lines) + "\n"


CAPTION = (
    "Each figure: median over the runs [min–max]; ×N = N times better than the baseline's median "
    "(ROUND_ROBIN when it ran). TTFT in simulated seconds; prefix hit = cached / queried prompt tokens "
    "over all pods (the pods' counters); predicted hit = the picker's mean predicted prefix ratio per "
    "request (llm_d_epp_prefix_indexer_hit_ratio, all workers; weighted per request, not per token); "
    "predicted - actual in percentage points; max/min share = the busiest pod's finished requests over the "
    "idlest's (inf: a pod got none); ok/failed = median requests per run."
)


def markdown_document(intro: str, results: Sequence[RunResult]) -> str:
    parts = [intro]
    by_workload = cells_by_workload(results)
    params = {r.workload: r.params for r in results}
    for workload, cells in by_workload.items():
        shape = ", ".join(f"{k}={v}" for k, v in params[workload].items())
        known = WORKLOADS.get(workload)
        title = f"{known.number}. {workload}: {known.summary}" if known else workload
        parts += [f"\n## {title}\n", f"{shape}\n", markdown_table(cells)]
    parts.append("\n" + CAPTION + "\n")
    return "\n".join(parts)


def _run_document(r: RunResult) -> dict[str, Any]:
    return {
        "run": r.run,
        "seed": r.seed,
        "cold_caches": r.cold_caches,
        "wall_seconds": round(r.wall_seconds, 2),
        "attempts": r.attempts,
        "share_ratio": share_ratio(r.row),
        "hit_gap": hit_gap(r.row),
        **asdict(r.row),
    }


def json_document(context: dict[str, Any], results: Sequence[RunResult]) -> dict[str, Any]:
    """Context (commit, config hashes, machine, command...), then per workload its params and variants."""
    workloads: dict[str, Any] = {}
    cells = cells_by_workload(results)
    for workload, workload_cells in cells.items():
        runs = [r for r in results if r.workload == workload]
        variants = {}
        for cell in workload_cells:
            variants[cell.variant] = {
                "kind": cell.kind,
                "seeds": list(cell.seeds),
                "figures": {name: asdict(spread) for name, spread in cell.figures.items()},
                "runs": [_run_document(r) for r in runs if r.variant.name == cell.variant],
            }
        workloads[workload] = {"params": runs[0].params, "variants": variants}
    document: dict[str, Any] = finite({**context, "workloads": workloads})
    return document


def write_matrix_reports(
    context: dict[str, Any], intro: str, results: Sequence[RunResult], output_dir: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """matrix.json and matrix.md in `output_dir`; returns their paths and the JSON document."""
    json_path, md_path = output_dir / "matrix.json", output_dir / "matrix.md"
    document = json_document(context, results)
    json_path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    md_path.write_text(markdown_document(intro, results), encoding="utf-8")
    return json_path, md_path, document
