"""`epp gateway`: serve the OpenAI API in front of a pool of vLLM pods, picking a pod per request."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from epp import event_loop
from epp.picker_cli import add_picker_arguments, configure_logging, picker_option_values

if TYPE_CHECKING:
    from gateway.server import Gateway


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="run the OpenAI-compatible routing gateway",
        description="Serve the OpenAI API at http://HOST:PORT/v1, routing each request to a pod with epp.",
    )
    add_picker_arguments(p)
    p.add_argument("--port", type=_port, default=8000, help="port; 0 picks a free one (default 8000)")
    p.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=None,
        help="largest request body accepted; bigger ones get 413 (default 10 MiB)",
    )
    p.add_argument(
        "--connect-timeout", type=_seconds, default=2.0, help="seconds to connect to a pod (default 2)"
    )
    p.add_argument(
        "--first-byte-timeout",
        type=_seconds,
        default=300.0,
        help="seconds to a pod's first body byte; then the attempt fails and is retried elsewhere "
        "(default 300: a non-streamed answer's first byte comes when it is complete)",
    )
    p.add_argument(
        "--chunk-timeout",
        type=_seconds,
        default=60.0,
        help="longest silence from a pod mid-answer; a stream then ends with an SSE error event (default 60)",
    )
    p.set_defaults(func=run_gateway)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
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

    configure_logging(args.log_level)
    extra = {} if args.max_body_bytes is None else {"max_body_bytes": args.max_body_bytes}
    options = GatewayOptions(
        **picker_option_values(args),
        port=args.port,
        connect_timeout_s=args.connect_timeout,
        first_byte_timeout_s=args.first_byte_timeout,
        chunk_timeout_s=args.chunk_timeout,
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
