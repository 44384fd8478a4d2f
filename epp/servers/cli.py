"""`epp serve`: run the endpoint picker (ext_proc gRPC + HTTP) over a pool of vLLM pods."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from epp import event_loop
from epp.picker_cli import add_picker_arguments, configure_logging, picker_option_values


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the endpoint picker",
        description="Run the endpoint picker: Envoy ext_proc on --grpc-port; /pick, /metrics on --http-port.",
    )
    add_picker_arguments(p)
    p.add_argument("--grpc-port", type=int, default=9002, help="ext_proc gRPC port (default 9002)")
    p.add_argument("--http-port", type=int, default=9003, help="HTTP port for /pick, /metrics (default 9003)")
    p.add_argument(
        "--fallback-endpoints",
        type=_non_negative,
        default=0,
        metavar="N",
        help="ext_proc: list up to N more candidates after the pick, for Envoy's retries (default 0)",
    )
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

    configure_logging(args.log_level)
    options = ServeOptions(
        **picker_option_values(args),
        grpc_port=args.grpc_port,
        http_port=args.http_port,
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
