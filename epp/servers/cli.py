"""`epp serve`: run the endpoint picker (ext_proc gRPC + HTTP) over a pool of vLLM pods."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from epp import event_loop
from epp.config.routing_strategy import RoutingStrategy


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the endpoint picker",
        description="Run the endpoint picker: Envoy ext_proc on --grpc-port; /pick, /metrics on --http-port.",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config (InferencePool, InferenceModel, EndpointPickerConfig documents); repeatable",
    )
    p.add_argument("--endpoints", default=None, help="static endpoints host:port,... (added to the config's)")
    p.add_argument(
        "--strategy",
        choices=[s.value for s in RoutingStrategy],
        default=None,
        help="built-in strategy (overrides the pool's)",
    )
    p.add_argument("--grpc-port", type=int, default=9002, help="ext_proc gRPC port (default 9002)")
    p.add_argument("--http-port", type=int, default=9003, help="HTTP port for /pick, /metrics (default 9003)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--scrape-interval", type=float, default=0.05, help="seconds between metrics scrapes")
    p.add_argument("--staleness", type=float, default=1.0, help="seconds after which pod metrics are too old")
    p.add_argument(
        "--fallback-endpoints",
        type=_non_negative,
        default=0,
        metavar="N",
        help="ext_proc: list up to N more candidates after the pick, for Envoy's retries (default 0)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--seed", type=int, default=None, help="seed for random pickers (reproducible runs)")
    p.set_defaults(func=run_serve)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def run_serve(args: argparse.Namespace) -> int:
    # Imported here so `epp --help` does not pay for grpc/uvicorn imports.
    from epp.app import ServeOptions, build_app
    from epp.config import ConfigError
    from epp.servers.extproc import SlowProtobufError

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # httpx logs every scrape request at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
    options = ServeOptions(
        config_paths=list(args.config),
        endpoints=args.endpoints,
        strategy=args.strategy,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        host=args.host,
        scrape_interval_s=args.scrape_interval,
        staleness_s=args.staleness,
        seed=args.seed,
        log_level=args.log_level,
        fallback_endpoints=args.fallback_endpoints,
    )
    try:
        app = build_app(options, env=dict(os.environ))
    except ConfigError as exc:
        print(f"epp serve: config error: {exc}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            event_loop.run(app.run())
    except (OSError, SlowProtobufError) as exc:  # e.g. a port already in use
        print(f"epp serve: {exc}", file=sys.stderr)
        return 1
    return 0
