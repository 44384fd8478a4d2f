"""`epp serve`: run the endpoint picker (ext_proc gRPC + HTTP) over a pool of vLLM pods."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from epp import event_loop
from epp.config.cli_types import non_negative_int, port, positive_int
from epp.limits import DEFAULT_MAX_BODY_BYTES
from epp.picker_cli import (
    add_picker_arguments,
    add_pod_key_arguments,
    configure_logging,
    picker_option_values,
)
from epp.pod_auth import PodKeyError, load_pod_credentials


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the endpoint picker",
        description="Run the endpoint picker: Envoy ext_proc on --grpc-port; /pick, /metrics on --http-port.",
    )
    add_picker_arguments(p)
    add_pod_key_arguments(p)
    p.add_argument("--grpc-port", type=port, default=9002, help="ext_proc gRPC port (default 9002)")
    p.add_argument(
        "--http-port", type=port, default=9003, help="HTTP port for /pick, /metrics (default 9003)"
    )
    p.add_argument(
        "--fallback-endpoints",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="ext_proc: list up to N more candidates after the pick, for Envoy's retries (default 0)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help="ext_proc and /pick: largest request body; bigger ones get 413 (default 10 MiB, as Envoy's)",
    )
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    # Imported here so `epp --help` does not pay for grpc/uvicorn imports.
    from epp.app import ServeOptions, build_app
    from epp.config import ConfigError
    from epp.servers.extproc import SlowProtobufError

    configure_logging(args.log_level)
    try:  # the pods' API key, read once; the error names the file or variable, never the key
        pod_credentials = load_pod_credentials(args.pod_api_key_file, os.environ)
    except PodKeyError as exc:
        print(f"epp serve: {exc}", file=sys.stderr)
        return 2
    options = ServeOptions(
        **picker_option_values(args),
        pod_credentials=pod_credentials,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        fallback_endpoints=args.fallback_endpoints,
        max_body_bytes=args.max_body_bytes,
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
