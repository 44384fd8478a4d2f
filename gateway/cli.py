"""`epp gateway`: serve the OpenAI API in front of a pool of vLLM pods, picking a pod per request."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from epp import event_loop, limits
from epp.config.cli_types import port, positive_int, positive_seconds
from epp.config.limit_flags import add_client_limit_flags
from epp.picker_cli import (
    add_picker_arguments,
    add_pod_key_arguments,
    configure_logging,
    picker_option_values,
)
from epp.pod_auth import PodKeyError, load_pod_credentials

if TYPE_CHECKING:
    from gateway.server import Gateway


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="run the OpenAI-compatible routing gateway",
        description="Serve the OpenAI API at http://HOST:PORT/v1, routing each request to a pod with epp.",
    )
    add_picker_arguments(p)
    add_pod_key_arguments(p)
    p.add_argument("--port", type=port, default=8000, help="port; 0 picks a free one (default 8000)")
    p.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=None,
        help="largest request body accepted; bigger ones get 413 (default 10 MiB)",
    )
    p.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=2.0,
        help="seconds to connect to a pod (default 2)",
    )
    p.add_argument(
        "--first-byte-timeout",
        type=positive_seconds,
        default=300.0,
        help="seconds to a pod's first body byte; then the attempt fails and is retried elsewhere "
        "(default 300: a non-streamed answer's first byte comes when it is complete)",
    )
    p.add_argument(
        "--chunk-timeout",
        type=positive_seconds,
        default=60.0,
        help="longest silence from a pod mid-answer; a stream then ends with an SSE error event (default 60)",
    )
    p.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="HOST:PORT=ADDR:PORT",
        help="connect to ADDR:PORT for provider HOST:PORT (Host, SNI and certificate stay HOST's), like "
        "curl --resolve; repeatable (tests, air-gapped mirrors)",
    )
    _add_edge_arguments(p)
    p.set_defaults(func=run_gateway)


def _add_edge_arguments(p: argparse.ArgumentParser) -> None:
    """The client-facing limits (epp/limits.py defaults; docs/gateway.md has the table)."""
    add_client_limit_flags(p)
    p.add_argument(
        "--max-buffered-body-bytes",
        type=positive_int,
        default=limits.DEFAULT_MAX_BUFFERED_BODY_BYTES,
        help="request body bytes held at once across requests; beyond it 503 + Retry-After "
        "(default 64 MiB, about 256 MiB of memory)",
    )
    p.add_argument(
        "--drain-timeout",
        type=positive_seconds,
        default=10.0,
        help="on SIGTERM/SIGINT, seconds in-flight requests may take to finish, then are cut (default 10)",
    )


def run_gateway(args: argparse.Namespace) -> int:
    # Imported here so `epp --help` does not pay for uvicorn/httpx imports.
    from epp.config import ConfigError
    from gateway.server import GatewayOptions, build_gateway

    configure_logging(args.log_level)
    extra = {} if args.max_body_bytes is None else {"max_body_bytes": args.max_body_bytes}
    try:  # the pods' API key, read once; the error names the file or variable, never the key
        pod_credentials = load_pod_credentials(args.pod_api_key_file, os.environ)
    except PodKeyError as exc:
        print(f"epp gateway: {exc}", file=sys.stderr)
        return 2
    options = GatewayOptions(
        **picker_option_values(args),
        pod_credentials=pod_credentials,
        port=args.port,
        connect_timeout_s=args.connect_timeout,
        first_byte_timeout_s=args.first_byte_timeout,
        chunk_timeout_s=args.chunk_timeout,
        allowed_routes=args.allowed_routes,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        idle_timeout_s=args.idle_timeout,
        max_buffered_body_bytes=args.max_buffered_body_bytes,
        drain_timeout_s=args.drain_timeout,
        resolve=tuple(args.resolve),
        **extra,
    )
    try:
        gateway = build_gateway(options, env=dict(os.environ))
    except ConfigError as exc:
        print(f"epp gateway: config error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # --allowed-routes the gateway cannot serve, a bad --resolve
        print(f"epp gateway: {exc}", file=sys.stderr)
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
