"""Command-line flags and logging set-up shared by the commands that run a picker (`serve`, `gateway`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from epp.config.routing_strategy import RoutingStrategy


def add_picker_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --endpoints, --strategy, --host, --scrape-interval/-timeout, --staleness, --max-attempts,
    --seed, --log-level."""
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config (InferencePool, InferenceModel, EndpointPickerConfig documents); repeatable",
    )
    p.add_argument("--endpoints", default=None, help="pods host:port,... (added to the config's)")
    p.add_argument(
        "--strategy",
        choices=[s.value for s in RoutingStrategy],
        default=None,
        help="built-in strategy (overrides the pool's)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--scrape-interval", type=float, default=0.05, help="seconds between metrics scrapes")
    p.add_argument(
        "--scrape-timeout", type=float, default=0.5, help="seconds one scrape may take (slower: slow pod)"
    )
    p.add_argument("--staleness", type=float, default=1.0, help="seconds after which pod metrics are too old")
    p.add_argument(
        "--max-attempts",
        type=int,
        default=2,
        help="pods tried per request: the pick, then retries elsewhere before any byte reached the client "
        "(default 2)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for random pickers (reproducible runs)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def picker_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The PickerOptions fields (epp.core) that `add_picker_arguments`' flags set."""
    return {
        "config_paths": list(args.config),
        "endpoints": args.endpoints,
        "strategy": args.strategy,
        "host": args.host,
        "scrape_interval_s": args.scrape_interval,
        "scrape_timeout_s": args.scrape_timeout,
        "max_attempts": args.max_attempts,
        "staleness_s": args.staleness,
        "seed": args.seed,
        "log_level": args.log_level,
    }


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":  # httpx logs every request it makes at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
