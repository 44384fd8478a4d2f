"""Render epp's dashboards to deploy/grafana/*.json (`python -m bench.dashboards [--check] [--out DIR]`).

The JSON is committed so it can be imported without Python; tests/test_dashboards_sync.py regenerates it
and fails when the committed files differ from the code.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from bench.dashboards import gateway, picker, vllm

OUT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "epp-picker.json": picker.build,
    "epp-gateway.json": gateway.build,
    "epp-vllm-pods.json": vllm.build,
}


def render(build: Callable[[], dashboard.Dashboard]) -> str:
    """The dashboard as stable, diff-friendly JSON (sorted keys, two-space indent, final newline)."""
    model = json.loads(JSONEncoder().encode(build().build()))
    for i, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = i  # the builders leave ids unset (rows get 0); Grafana wants them unique
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def rendered() -> dict[str, str]:
    return {name: render(build) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dashboards", description=__doc__)
    p.add_argument("--out", type=Path, default=OUT_DIR, help="folder to write (default deploy/grafana)")
    p.add_argument("--check", action="store_true", help="only say which files differ; exit 1 if any")
    args = p.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        path = args.out / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "differ" if args.check else "written"
    print(f"{len(stale)} dashboard(s) {verb}: {', '.join(stale) or '-'}")
    return 1 if args.check and stale else 0
