"""`epp envoy up` (epp serve + Envoy for one pool) and `epp envoy config` (print the rendered Envoy YAML)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import TypedDict

from epp import limits
from epp.config.cli_types import non_negative_int, port, positive_int, positive_seconds
from epp.config.limit_flags import add_client_limit_flags
from epp.config.routing_strategy import RoutingStrategy
from epp.envoy_gateway.config import EnvoyConfigError
from epp.routes import AllowedRoutes
from epp.traffic.resolve import Address, parse_overrides


def _pool_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoints", default=None, help="pool pods ip:port,... (added to the config's)")
    p.add_argument(
        "--config", action="append", default=[], metavar="FILE", help="epp YAML config; repeatable"
    )
    p.add_argument("--strategy", choices=[s.value for s in RoutingStrategy], default=None)
    p.add_argument("--host", default="127.0.0.1", help="Envoy listener address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8080, help="Envoy listener port (default 8080; 0: any free)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--fail-open",
        dest="fail_open",
        action="store_const",
        const=True,
        help="when epp is down or fails, route by least request (default: the pool's failureMode)",
    )
    mode.add_argument(
        "--fail-closed",
        dest="fail_open",
        action="store_const",
        const=False,
        help="when epp is down or fails, answer 502 (the default without a FailOpen pool)",
    )
    p.add_argument(
        "--retries", type=non_negative_int, default=2, help="retries on another pod before any response byte"
    )
    p.add_argument(
        "--upstream-idle-timeout",
        type=positive_seconds,
        default=300.0,
        help="seconds a pod may stay silent (before or during its answer) before the attempt fails and, "
        "if nothing reached the client yet, is retried elsewhere (default 300)",
    )
    p.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="HOST:PORT=ADDR:PORT",
        help="connect to a provider host at ADDR:PORT instead (SNI and certificate stay HOST's); repeatable",
    )
    p.add_argument(
        "--upstream-ca-file",
        default=None,
        metavar="PEM",
        help="CA bundle for provider certificates (default: a provider's caFile, else certifi's bundle)",
    )
    _limit_flags(p)


def _resolve(entries: list[str]) -> dict[Address, Address]:
    try:
        return parse_overrides(entries)
    except ValueError as exc:
        raise EnvoyConfigError(str(exc)) from None


def _limit_flags(p: argparse.ArgumentParser) -> None:
    """What a client may send (epp/limits.py; the table in docs/envoy.md)."""
    add_client_limit_flags(p)
    p.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=limits.DEFAULT_MAX_BODY_BYTES,
        help="largest request body; bigger ones get 413 (default 10 MiB; epp serve is given the same)",
    )
    p.add_argument(
        "--stream-idle-timeout",
        type=positive_seconds,
        default=None,
        help="seconds a request may see no byte either way before Envoy ends it (default: every attempt's "
        "--upstream-idle-timeout plus 10 s)",
    )


class LimitOptions(TypedDict):
    allowed_routes: AllowedRoutes
    max_body_bytes: int
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    stream_idle_timeout_s: float | None


def limit_options(args: argparse.Namespace) -> LimitOptions:
    """The limit flags as EnvoyConfigOptions / StackOptions fields."""
    return {
        "allowed_routes": args.allowed_routes,
        "max_body_bytes": args.max_body_bytes,
        "max_header_bytes": args.max_header_bytes,
        "max_headers": args.max_headers,
        "header_timeout_s": args.header_timeout,
        "body_timeout_s": args.body_timeout,
        "idle_timeout_s": args.idle_timeout,
        "stream_idle_timeout_s": args.stream_idle_timeout,
    }


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    envoy = subparsers.add_parser("envoy", help="run epp behind a real Envoy", description=__doc__)
    sub = envoy.add_subparsers(dest="envoy_command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", help="start epp serve and Envoy for a pool; stop both on SIGINT/SIGTERM")
    _pool_flags(up)
    up.add_argument("--grpc-port", type=port, default=0, help="epp ext_proc port (default 0: any free)")
    up.add_argument(
        "--fallback-endpoints",
        type=non_negative_int,
        default=2,
        help="retry addresses epp lists after its pick",
    )
    up.add_argument(
        "--concurrency", type=positive_int, default=None, help="Envoy worker threads (default: per core)"
    )
    up.add_argument("--envoy-log-level", default="warning", help="Envoy's --log-level (default warning)")
    up.add_argument(
        "--replicas",
        type=positive_int,
        default=1,
        help="epp serve processes behind Envoy's health-checked ext_proc cluster, each on free ports "
        "(--grpc-port then unused; default 1)",
    )
    up.set_defaults(func=run_up)

    config = sub.add_parser(
        "config",
        aliases=["render"],
        help="print the Envoy YAML for a pool, its traffic documents and an ext_proc address",
    )
    _pool_flags(config)
    config.add_argument("--grpc-port", type=port, default=9002, help="epp ext_proc port (default 9002)")
    config.add_argument("--grpc-host", default="127.0.0.1", help="epp ext_proc address (default 127.0.0.1)")
    config.add_argument(
        "--admin-port", type=port, default=9901, help="Envoy admin port on 127.0.0.1 (default 9901)"
    )
    config.add_argument(
        "--epp",
        action="append",
        default=[],
        metavar="IP:GRPC_PORT[/HTTP_PORT]",
        help="an epp serve replica; repeat for several (instead of --grpc-host/--grpc-port): Envoy balances "
        "ext_proc streams over them, health-checks /readyz on HTTP_PORT (else a TCP connect) and sends "
        "each its own access log (docs/replicas.md)",
    )
    config.add_argument(
        "--health-check-interval",
        type=positive_seconds,
        default=1.0,
        help="with --epp: seconds between health checks of each replica (default 1)",
    )
    config.set_defaults(func=run_config)


def run_config(args: argparse.Namespace) -> int:
    from epp.config import ConfigError
    from epp.envoy_gateway.config import EnvoyConfigOptions, render_yaml, resolve_pool
    from epp.envoy_gateway.replicas import ReplicaError, parse_replica

    try:
        replicas = tuple(parse_replica(text) for text in args.epp)
    except ReplicaError as exc:
        print(f"epp envoy config: {exc}", file=sys.stderr)
        return 2
    try:
        pool = resolve_pool(args.config, args.endpoints, None, args.fail_open)
        text = render_yaml(
            EnvoyConfigOptions(
                endpoints=pool.endpoints,
                extproc_host=args.grpc_host,
                extproc_port=args.grpc_port,
                listen_host=args.host,
                listen_port=args.port,
                admin_port=args.admin_port,
                fail_open=pool.fail_open,
                num_retries=args.retries,
                upstream_idle_timeout_s=args.upstream_idle_timeout,
                **limit_options(args),
                traffic=pool.traffic,
                resolve=_resolve(args.resolve),
                upstream_ca_file=args.upstream_ca_file,
                extproc_replicas=replicas,
                health_check_interval_s=args.health_check_interval,
            )
        )
    except (ConfigError, EnvoyConfigError) as exc:
        print(f"epp envoy config: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def run_up(args: argparse.Namespace) -> int:
    from bench.envoy_stack.stack import EnvoyStack, StackError, StackOptions
    from epp.config import ConfigError

    options = StackOptions(
        endpoints=args.endpoints,
        config_paths=args.config,
        strategy=args.strategy,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        fail_open=args.fail_open,
        fallback_endpoints=args.fallback_endpoints,
        num_retries=args.retries,
        upstream_idle_timeout_s=args.upstream_idle_timeout,
        **limit_options(args),
        envoy_concurrency=args.concurrency,
        envoy_log_level=args.envoy_log_level,
        resolve=tuple(args.resolve),
        upstream_ca_file=args.upstream_ca_file,
        replicas=args.replicas,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = EnvoyStack(options=options)
    try:
        try:
            stack.start()
        except (ConfigError, EnvoyConfigError) as exc:
            print(f"epp envoy up: config error: {exc}", file=sys.stderr)
            return 2
        except StackError as exc:
            print(f"epp envoy up: {exc}", file=sys.stderr)
            return 1
        print(f"epp envoy listening on {stack.base_url}", flush=True)
        epps = ", ".join(stack.epp_urls)
        print(f"epp (metrics, /pick) on {epps}, envoy admin on {stack.admin_url}", file=sys.stderr)
        while not stop.wait(0.2):
            failed = stack.failed_child()
            if failed is not None:
                print(f"epp envoy up: {failed.failure('exited')}", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
