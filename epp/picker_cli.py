"""Command-line flags and logging set-up shared by the commands that run a picker (`serve`, `gateway`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from epp.config.cli_types import any_int, non_negative_seconds, positive_int, positive_seconds
from epp.config.routing_strategy import RoutingStrategy


def add_picker_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --endpoints, --strategy, --host, --scrape-interval/-timeout, --staleness, --max-attempts,
    --seed, --log-level, --config-reload-interval."""
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
        "--scrape-interval", type=positive_seconds, default=0.05, help="seconds between metrics scrapes"
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


def picker_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The PickerOptions fields (epp.core) that `add_picker_arguments`' flags set."""
    return {
        "config_paths": list(args.config),
        "endpoints": args.endpoints,
        "strategy": args.strategy,
        "host": args.host,
        "scrape_interval_s": args.scrape_interval,
        "scrape_timeout_s": args.scrape_timeout,
        "max_attempts": args.max_attempts,
        "staleness_s": args.staleness,
        "seed": args.seed,
        "log_level": args.log_level,
        "config_reload_interval_s": args.config_reload_interval,
        "cache_service": args.cache_service,
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
