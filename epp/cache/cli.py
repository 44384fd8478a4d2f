"""`epp cache serve`: the cache service (epp's protocol, ModelCache's API, the admin API) on Redis.

Configured like the mesh's default cache service, by REDIS_ADDRESS, REDIS_PASSWORD and REDIS_EXPIRED_SECONDS
(the environment), or by the same documents `epp gateway` reads (`--config`: the seed's WasmPlugin +
ConfigMap, an LLMCache document); flags win over both. Prints `epp cache serve listening on URL` once it
accepts connections; SIGTERM/SIGINT stop it cleanly (in-flight requests get a moment to finish).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from epp import event_loop
from epp.config.cache import CacheSettings
from epp.config.cli_types import port
from epp.config.endpoints import parse_address
from epp.picker_cli import configure_logging

logger = logging.getLogger(__name__)
ADMIN_TOKEN_ENV = "EPP_CACHE_ADMIN_TOKEN"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = subparsers.add_parser(
        "cache", help="the response cache service", description="The LLM response cache."
    )
    sub = cache.add_subparsers(dest="cache_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "serve",
        help="run the cache service (epp's protocol, ModelCache's API, admin API) on Redis",
        description="Serve epp's cache-service protocol, ModelCache's POST /modelcache and the admin API "
        "over Redis (env: REDIS_ADDRESS, REDIS_PASSWORD, REDIS_EXPIRED_SECONDS, EPP_CACHE_ADMIN_TOKEN)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8080, help="port; 0 picks a free one (default 8080)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="YAML documents (WasmPlugin, ConfigMap, LLMCache); repeatable",
    )
    p.add_argument(
        "--redis",
        type=_redis_address,
        default=None,
        metavar="HOST:PORT",
        help="Redis address (default: REDIS_ADDRESS, else the config's, else 127.0.0.1:6379)",
    )
    p.add_argument(
        "--semantic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the semantic tier on or off (default: the LLMCache document's semantic.enabled, else off)",
    )
    p.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        metavar="X",
        help="semantic similarity threshold in (0, 1] (default: the config's, else the tier's)",
    )
    p.add_argument(
        "--admin-token-file",
        default=None,
        metavar="PATH",
        help=f"file holding the admin API's bearer token (default: env {ADMIN_TOKEN_ENV}; none: no token)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=run_serve)


def _redis_address(text: str) -> str:
    try:
        host, number = parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (got {text!r})") from None
    return f"{host}:{number}"


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def run_serve(args: argparse.Namespace) -> int:
    from epp.config import ConfigError

    configure_logging(args.log_level)
    try:
        settings = service_settings(args, dict(os.environ))
        token = admin_token(args.admin_token_file, os.environ)
    except ConfigError as exc:
        print(f"epp cache serve: config error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"epp cache serve: {exc}", file=sys.stderr)
        return 2
    semantic = settings.semantic.enabled
    try:
        with contextlib.suppress(KeyboardInterrupt):
            event_loop.run(serve(settings, args.host, args.port, token, semantic, args.log_level, _announce))
    except OSError as exc:  # the port is in use
        print(f"epp cache serve: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:  # the semantic tier's modules
        print(f"epp cache serve: the semantic tier cannot load: {exc}", file=sys.stderr)
        return 2
    return 0


def service_settings(args: argparse.Namespace, env: Mapping[str, str]) -> CacheSettings:
    """The documents' settings (or the environment's), then the flags."""
    from epp.config import load_config
    from epp.config.cache_build import settings_from_env

    settings: CacheSettings | None = None
    if args.config:
        settings = load_config(args.config, env).cache
    if settings is None:
        settings = settings_from_env(env)
    if args.redis is not None:
        settings = settings.with_redis(address=args.redis)
    semantic = settings.semantic
    if args.semantic is not None:
        semantic = dataclasses.replace(semantic, enabled=args.semantic)
    if args.threshold is not None:
        semantic = dataclasses.replace(semantic, threshold=args.threshold)
    return dataclasses.replace(settings, semantic=semantic)


def admin_token(path: str | None, env: Mapping[str, str]) -> str | None:
    """The admin token from `path`, else EPP_CACHE_ADMIN_TOKEN, else None; ValueError names the file only."""
    if path is not None:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ValueError(f"--admin-token-file {path}: cannot read: {reason}") from None
        if not token:
            raise ValueError(f"--admin-token-file {path}: the file is empty")
        return token
    return env.get(ADMIN_TOKEN_ENV) or None


async def serve(
    settings: CacheSettings,
    host: str,
    port_number: int,
    token: str | None,
    semantic: bool,
    log_level: str = "INFO",
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set); `on_ready(url)` once connections are accepted."""
    from prometheus_client import CollectorRegistry

    from epp.cache.metrics import CacheMetrics
    from epp.cache.service.app import CacheService
    from epp.cache.service.build import build_tiered
    from epp.cache.types import CacheUnavailable
    from epp.embedded_http import EmbeddedServer
    from epp.lifecycle import wait_for_shutdown

    registry = CollectorRegistry()
    metrics = CacheMetrics(registry)
    cache = build_tiered(settings, metrics, semantic=semantic)
    try:
        try:
            loaded = await cache.load()
            if semantic:
                logger.info("semantic tier: %d entries loaded from Redis", loaded)
        except CacheUnavailable as exc:
            logger.warning("Redis at %s is unavailable at start-up: %s", settings.redis.address, exc)
        service = CacheService(
            cache,
            metrics,
            registry,
            admin_token=token,
            semantic=semantic,
            max_entry_bytes=settings.max_entry_bytes,
        )
        server = EmbeddedServer(service.app(), host, port_number, log_level, "cache")
        bound = await server.start()
        url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
        logger.info(
            "epp cache serve at %s: Redis %s, ttl %gs, semantic %s, admin token %s",
            url, settings.redis.address, settings.default_ttl_s, "on" if semantic else "off",
            "set" if token else "none",
        )  # fmt: skip
        try:
            assert server.task is not None
            ready = None if on_ready is None else (lambda: on_ready(url))
            await wait_for_shutdown(stop or asyncio.Event(), server.task, on_ready=ready)
            logger.info("epp cache serve shutting down")
        finally:
            await server.stop()
    finally:
        await cache.close()


def _announce(url: str) -> None:
    print(f"epp cache serve listening on {url}", flush=True)
