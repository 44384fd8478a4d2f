"""The client-limit flags both data planes take (`epp gateway`, `epp envoy config|up`), with one meaning.

Defaults come from epp/limits.py; each plane's docs table (docs/gateway.md, docs/envoy.md) says what it does
beyond the limit. Plane-specific flags (the gateway's body budget and drain, Envoy's stream idle timeout)
stay with their CLI.
"""

from __future__ import annotations

import argparse

from epp import limits
from epp.config.cli_types import positive_int, positive_seconds
from epp.routes import AllowedRoutes, RouteSpecError, parse_routes


def allowed_routes(text: str) -> AllowedRoutes:
    """argparse type of `--allowed-routes 'METHOD /path,...'`."""
    try:
        return parse_routes(text)
    except RouteSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_client_limit_flags(p: argparse.ArgumentParser) -> None:
    """--allowed-routes, --max-header-bytes, --max-headers, --header-timeout, --body-timeout and
    --idle-timeout."""
    p.add_argument(
        "--allowed-routes",
        type=allowed_routes,
        default=AllowedRoutes(),
        metavar="'METHOD /path,...'",
        help="the only routes that reach a pod; other paths 404, other methods 405 "
        f"(default {AllowedRoutes()})",
    )
    p.add_argument(
        "--max-header-bytes",
        type=positive_int,
        default=limits.DEFAULT_MAX_HEADER_BYTES,
        help="request target plus all headers together; beyond: 431 (default 64 KiB)",
    )
    p.add_argument(
        "--max-headers",
        type=positive_int,
        default=limits.DEFAULT_MAX_HEADERS,
        help=f"request header count; beyond: 431 (default {limits.DEFAULT_MAX_HEADERS})",
    )
    p.add_argument(
        "--header-timeout",
        type=positive_seconds,
        default=limits.DEFAULT_HEADER_TIMEOUT_S,
        help="seconds a client has to send its request headers; then 408 (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=positive_seconds,
        default=limits.DEFAULT_BODY_TIMEOUT_S,
        help="seconds a client has to send its body after the headers; then 408 (default 30)",
    )
    p.add_argument(
        "--idle-timeout",
        type=positive_seconds,
        default=limits.DEFAULT_IDLE_TIMEOUT_S,
        help="seconds a keep-alive connection may wait for its next request (default 60)",
    )
