"""`epp gateway`: serve the OpenAI API in front of a pool of vLLM pods, picking a pod per request."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
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
    from gateway.server import Gateway, GatewayOptions


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
    _add_worker_arguments(p)
    p.set_defaults(func=run_gateway)


def _add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """--workers and --worker-metrics-port (docs/replicas.md)."""
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="gateway processes sharing --port (SO_REUSEPORT), each with its own picker and scraper; "
        "a supervisor restarts one that dies (default 1: no supervisor)",
    )
    p.add_argument(
        "--worker-metrics-port",
        type=port,
        default=None,
        metavar="PORT",
        help="worker I also serves its own /metrics and /healthz on PORT+I (0: each a free port, printed "
        "on stderr); without it /metrics on --port answers from whichever worker took the connection",
    )


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
        metrics_port=args.worker_metrics_port,
        **extra,
    )
    if args.workers > 1:
        return _run_workers(options, args.workers)
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
    if gateway.metrics_url is not None:
        print(f"epp gateway: metrics on {gateway.metrics_url}", file=sys.stderr, flush=True)


def _run_workers(options: GatewayOptions, count: int) -> int:
    """`--workers N`: bind the port once here (so --port 0 works), fork N workers that bind it again with
    SO_REUSEPORT, supervise them (epp.workers)."""
    from epp.config import ConfigError
    from epp.config.cli import check_scheduler
    from epp.core import load_pool
    from epp.embedded_http import listen_socket
    from epp.workers import WorkerPlan, supervise
    from gateway.server import build_gateway, check_routes

    env = dict(os.environ)
    try:  # the config's errors once, here, rather than once per worker
        check_routes(options.allowed_routes)
        check_scheduler(load_pool(options, env)[0])
    except ConfigError as exc:
        print(f"epp gateway: config error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"epp gateway: {exc}", file=sys.stderr)
        return 2
    try:
        # Bound, never listening: it holds the port (no connection is queued on it) while workers come and go.
        holder = listen_socket(options.host, options.port, reuse_port=True)
    except OSError as exc:
        print(f"epp gateway: {exc}", file=sys.stderr)
        return 1
    bound = holder.getsockname()[1]
    base = options.metrics_port

    def worker(index: int, ready: Callable[[str], None]) -> int:
        holder.close()  # the parent's copy keeps the port
        metrics_port = None if base is None else (0 if base == 0 else base + index)
        opts = dataclasses.replace(options, port=bound, reuse_port=True, metrics_port=metrics_port)
        try:
            gateway = build_gateway(opts, env=env)
        except (ConfigError, ValueError) as exc:
            print(f"epp gateway: worker {index}: {exc}", file=sys.stderr)
            return 2

        def on_ready(g: Gateway) -> None:
            ready("" if g.metrics_url is None else f"metrics {g.metrics_url}")

        try:
            with contextlib.suppress(KeyboardInterrupt):
                event_loop.run(gateway.run(on_ready=on_ready))
        except OSError as exc:
            print(f"epp gateway: worker {index}: {exc}", file=sys.stderr)
            return 1
        return 0

    host = options.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    plan = WorkerPlan(count, name="epp gateway", stop_grace_s=options.drain_timeout_s + 10.0)
    try:
        return supervise(worker, plan, on_ready=lambda: print(f"epp gateway listening on {url}", flush=True))
    finally:
        holder.close()
