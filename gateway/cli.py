"""`epp gateway`: serve the OpenAI API in front of a pool of vLLM pods, picking a pod per request."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING

from epp import event_loop
from epp.config.routing_strategy import RoutingStrategy

if TYPE_CHECKING:
    from gateway.server import Gateway


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="run the OpenAI-compatible routing gateway",
        description="Serve the OpenAI API at http://HOST:PORT/v1, routing each request to a pod with epp.",
    )
    p.add_argument("--endpoints", default=None, help="pods host:port,... (added to the config's)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config (InferencePool, InferenceModel, EndpointPickerConfig documents); repeatable",
    )
    p.add_argument(
        "--strategy",
        choices=[s.value for s in RoutingStrategy],
        default=None,
        help="built-in strategy (overrides the pool's)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port; 0 picks a free one (default 8000)")
    p.add_argument("--scrape-interval", type=float, default=0.05, help="seconds between metrics scrapes")
    p.add_argument("--staleness", type=float, default=1.0, help="seconds after which pod metrics are too old")
    p.add_argument("--seed", type=int, default=None, help="seed for random pickers (reproducible runs)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=None,
        help="largest request body accepted; bigger ones get 413 (default 10 MiB)",
    )
    p.set_defaults(func=run_gateway)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_gateway(args: argparse.Namespace) -> int:
    # Imported here so `epp --help` does not pay for uvicorn/httpx imports.
    from epp.config import ConfigError
    from gateway.server import GatewayOptions, build_gateway

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # httpx logs every scrape and upstream request at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
    extra = {} if args.max_body_bytes is None else {"max_body_bytes": args.max_body_bytes}
    options = GatewayOptions(
        config_paths=list(args.config),
        endpoints=args.endpoints,
        strategy=args.strategy,
        host=args.host,
        port=args.port,
        scrape_interval_s=args.scrape_interval,
        staleness_s=args.staleness,
        seed=args.seed,
        log_level=args.log_level,
        **extra,
    )
    try:
        gateway = build_gateway(options, env=dict(os.environ))
    except ConfigError as exc:
        print(f"epp gateway: config error: {exc}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            event_loop.run(gateway.run(on_ready=_announce))
    except OSError as exc:  # e.g. the port is in use
        print(f"epp gateway: {exc}", file=sys.stderr)
        return 1
    return 0


def _announce(gateway: Gateway) -> None:
    print(f"epp gateway listening on {gateway.base_url}", flush=True)
