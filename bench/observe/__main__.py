"""`make observe` (`python -m bench.observe`): simulated pods and `epp gateway` under a short traffic mix,
with a local Prometheus scraping them and evaluating deploy/prometheus/rules; prints Prometheus's URL and the
dashboards to import, then how many dashboard and rule queries have data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
from pathlib import Path

from bench.observe.queries import GRAFANA_DIR, all_queries, dashboard_files
from bench.observe.stack import observed_stack
from bench.observe.traffic import drive


async def run(args: argparse.Namespace, folder: Path) -> int:
    async with observed_stack(folder, interval_s=args.interval, log_level="ERROR") as stack:
        prom = stack.prometheus
        print(f"Prometheus: {prom.url}  (targets: {prom.url}/targets, alerts: {prom.url}/alerts)")
        print(f"epp gateway: {stack.gateway.base_url}  (metrics: {stack.gateway.base_url}/metrics)")
        print(
            "Grafana dashboards to import (Dashboards > New > Import, pick this Prometheus as data source):"
        )
        for path in dashboard_files():
            print(f"  {path}")
        print("sending traffic with injected faults (their warnings are silenced) ...")
        logging.disable(logging.WARNING)
        statuses = await drive(stack, rounds=args.rounds, pause_s=max(1.5, 1.5 * args.interval))
        await asyncio.sleep(3 * args.interval)
        print(f"traffic sent: {dict(statuses)}")
        queries = all_queries("1m")
        with_data = 0
        for q in queries:
            if await asyncio.to_thread(prom.query, q.expr):
                with_data += 1
        print(f"{len(queries)} dashboard and rule queries evaluated, {with_data} with data")
        firing = [a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]]
        print(f"alerts pending or firing: {', '.join(sorted(set(firing))) or '-'}")
        if args.hold:
            print("serving until Ctrl-C")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.observe", description=__doc__)
    p.add_argument("--rounds", type=int, default=20, help="traffic rounds, about 2 s each (default 20)")
    p.add_argument("--interval", type=float, default=1.0, help="Prometheus scrape and rule interval, s")
    p.add_argument("--folder", type=Path, help="keep Prometheus's TSDB and config here (default: a temp dir)")
    p.add_argument("--hold", action="store_true", help="keep everything running after the traffic")
    args = p.parse_args(argv)
    assert GRAFANA_DIR.is_dir()
    try:
        if args.folder is not None:
            return asyncio.run(run(args, args.folder))
        with tempfile.TemporaryDirectory(prefix="epp-observe-") as folder:
            return asyncio.run(run(args, Path(folder)))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
