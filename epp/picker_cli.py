"""Command-line flags and logging set-up shared by the commands that run a picker (`serve`, `gateway`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from epp.config.cli_types import any_int, non_negative_seconds, positive_int, positive_seconds
from epp.config.routing_strategy import RoutingStrategy
from epp.discovery.options import DiscoveryOptions, parse_discovery
from metrics_scraper.scraper import DEFAULT_IDLE_INTERVAL_S, DEFAULT_INTERVAL_S


def add_picker_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --endpoints, --strategy, --host, --scrape-interval/-idle-interval/-timeout, --staleness,
    --max-attempts, --seed, --log-level, --config-reload-interval, --cache-service and the discovery flags."""
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
    p.add_argument(
        "--scrape-interval",
        type=positive_seconds,
        default=DEFAULT_INTERVAL_S,
        help="seconds between /metrics scrapes of a busy pod (something running or waiting, or epp has "
        f"requests in flight to it; default {DEFAULT_INTERVAL_S:g}; docs/scraping.md)",
    )
    p.add_argument(
        "--scrape-idle-interval",
        type=positive_seconds,
        default=DEFAULT_IDLE_INTERVAL_S,
        help="seconds between scrapes of an idle pod; a request epp sends it brings the next scrape forward "
        f"(default {DEFAULT_IDLE_INTERVAL_S:g}; equal to --scrape-interval: a fixed cadence)",
    )
    p.add_argument(
        "--scrape-timeout",
        type=positive_seconds,
        default=0.5,
        help="seconds one scrape may take (slower: slow pod)",
    )
    p.add_argument(
        "--staleness", type=positive_seconds, default=1.0, help="seconds after which pod metrics are too old"
    )
    p.add_argument(
        "--max-attempts",
        type=positive_int,
        default=2,
        help="pods tried per request: the pick, then retries elsewhere before any byte reached the client "
        "(default 2)",
    )
    p.add_argument("--seed", type=any_int, default=None, help="seed for random pickers (reproducible runs)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument(
        "--config-reload-interval",
        type=non_negative_seconds,
        default=2.0,
        help="seconds between checks of the --config files for changes, applied without a restart "
        "(traffic documents only; SIGHUP reloads at once); 0: only on SIGHUP (default 2)",
    )
    p.add_argument(
        "--cache-service",
        default=None,
        metavar="in-process|URL",
        help="where the response cache (a cache WasmPlugin or LLMCache document) lives: `in-process` (the "
        "tiers in this process, on the configured Redis) or the URL of an `epp cache serve`; default: "
        "the WasmPlugin's service:port, else in-process",
    )
    add_discovery_arguments(p)


def _discovery(value: str) -> tuple[str, Path | None]:
    try:
        return parse_discovery(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_discovery_arguments(p: argparse.ArgumentParser) -> None:
    """--discovery kubernetes|file:PATH, --kube-api/-token-file/-ca-file, --pool-name/-namespace,
    --discovery-interval (docs/operations.md, "Pod discovery")."""
    g = p.add_argument_group("pod discovery (docs/operations.md)")
    g.add_argument(
        "--discovery",
        type=_discovery,
        default=None,
        metavar="kubernetes|file:PATH",
        help="find the pods: `kubernetes` lists and watches the InferencePool's pods (in-cluster service "
        "account, or --kube-api); `file:PATH` reads a YAML file of endpoints and follows its changes. "
        "Added to --endpoints and static endpoints",
    )
    g.add_argument(
        "--kube-api",
        default=None,
        metavar="URL",
        help="with --discovery kubernetes: this apiserver URL instead of KUBERNETES_SERVICE_HOST/PORT (e.g. "
        "`kubectl proxy`'s http://127.0.0.1:8001)",
    )
    g.add_argument(
        "--kube-token-file", type=Path, default=None, metavar="PATH", help="bearer token for --kube-api"
    )
    g.add_argument("--kube-ca-file", type=Path, default=None, metavar="PATH", help="CA bundle for --kube-api")
    g.add_argument(
        "--pool-name", default=None, help="the InferencePool to follow (default: the config's one)"
    )
    g.add_argument(
        "--pool-namespace",
        default=None,
        help="its namespace (default: the pool document's, else this pod's, else `default`)",
    )
    g.add_argument(
        "--discovery-interval",
        type=positive_seconds,
        default=1.0,
        help="with --discovery file:PATH: seconds between checks of the file (default 1)",
    )


def discovery_options(args: argparse.Namespace) -> DiscoveryOptions | None:
    """The DiscoveryOptions `add_discovery_arguments`' flags ask for; None without --discovery."""
    if args.discovery is None:
        return None
    mode, path = args.discovery
    return DiscoveryOptions(
        mode,
        path,
        kube_api=args.kube_api,
        kube_token_file=args.kube_token_file,
        kube_ca_file=args.kube_ca_file,
        pool_name=args.pool_name,
        pool_namespace=args.pool_namespace,
        poll_interval_s=args.discovery_interval,
    )


def picker_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The PickerOptions fields (epp.core) that `add_picker_arguments`' flags set."""
    return {
        "config_paths": list(args.config),
        "endpoints": args.endpoints,
        "strategy": args.strategy,
        "host": args.host,
        "scrape_interval_s": args.scrape_interval,
        "scrape_idle_interval_s": args.scrape_idle_interval,
        "scrape_timeout_s": args.scrape_timeout,
        "max_attempts": args.max_attempts,
        "staleness_s": args.staleness,
        "seed": args.seed,
        "log_level": args.log_level,
        "config_reload_interval_s": args.config_reload_interval,
        "cache_service": args.cache_service,
        "discovery": discovery_options(args),
    }


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":  # httpx logs every request it makes at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)


# -- pod API key (epp.pod_auth) ------------------------------------------------------------------------------


def add_pod_key_arguments(p: argparse.ArgumentParser) -> None:
    """--pod-api-key-file (else env EPP_POD_API_KEY): the key the pods require (vLLM --api-key). The file is
    read once at start-up with `epp.pod_auth.load_pod_credentials(args.pod_api_key_file, env)`."""
    p.add_argument(
        "--pod-api-key-file",
        default=None,
        metavar="PATH",
        help="file holding the API key the pods require (vLLM --api-key), sent as a Bearer token; "
        "default: env EPP_POD_API_KEY. With a key, clients' Authorization/x-api-key never reach the pods; "
        "without, they pass through",
    )
