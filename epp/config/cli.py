"""`epp check-config FILE...`: load config files as `epp serve` would and summarize them (names only)."""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from epp.config.cache import summary_lines
from epp.config.errors import ConfigError, ConfigIssue, DocumentRef
from epp.config.kv_events import effective_kv_events
from epp.config.loader import load_config
from epp.config.result import EppConfig
from epp.config.routing_strategy import RoutingStrategy
from epp.config.traffic.config import TrafficConfig
from epp.config.traffic.policy import DEFAULT_CLIENT_PORT
from epp.datastore import Datastore
from epp.kv_events.precise_index import PreciseIndex
from epp.scheduling.builder import build_scheduler
from epp.scheduling.plugins import PluginConfigError
from scorers.builtin import default_registry


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "check-config",
        help="validate config files",
        description="Load YAML config files (${NAME} from the environment) and print what epp would use.",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="multi-document YAML file")
    p.add_argument("--strategy", choices=[s.value for s in RoutingStrategy], default=None)
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.files, dict(os.environ), strategy=args.strategy)
        check_scheduler(config)
    except ConfigError as exc:
        print(f"epp check-config: {exc}", file=sys.stderr)
        return 2
    print(summarize(config))
    return 0


def check_scheduler(config: EppConfig) -> None:
    """Build the scheduler as `epp serve` and `epp gateway` do (epp.core.PickerCore), so that a config they
    reject (unknown plugin type, bad parameters, a profile without a picker) fails here the same way."""
    picker = config.picker_config
    kv_index = None
    if effective_kv_events(picker.kv_events, [p.type for p in picker.plugins]) is not None:
        kv_index = PreciseIndex()  # as PickerCore: one per pool when KV events are followed
    try:
        build_scheduler(picker, Datastore(), default_registry(), random.Random(), kv_index=kv_index)
    except PluginConfigError as exc:
        where = ", ".join(str(s) for s in config.sources) or "--strategy"
        issue = ConfigIssue(DocumentRef(where, kind="EndpointPickerConfig"), str(exc))
        raise ConfigError([issue], config.redactor) from None


def summarize(config: EppConfig) -> str:
    """Human-readable summary; never shows document bodies (they may hold expanded API keys)."""
    lines = [f"strategy: {config.strategy_name}"]
    for pool in config.pools.values():
        lines.append(
            f"InferencePool {pool.name}: port {pool.spec.target_port_number}, "
            f"selector {pool.spec.selector}, routing {pool.routing_strategy.value}"
        )
    for name in config.models:
        spec = config.models.lookup(name)
        assert spec is not None
        targets = ", ".join(f"{t} ({w})" for t, w in spec.target_weights()) or name
        lines.append(f"InferenceModel {name}: {spec.criticality.value}, targets {targets}")
    lines += [f"endpoint {e.name}: {e.address}" for e in config.static_endpoints]
    if config.traffic is not None:
        lines += traffic_lines(config.traffic)
    if config.cache is not None:
        lines += summary_lines(config.cache)
    lines += [
        f"{d.kind} {d.name or '(unnamed)'} ({d.source} document {d.index})" for d in config.other_documents
    ]
    return config.redactor.redact("\n".join(lines))


def traffic_lines(traffic: TrafficConfig) -> list[str]:
    """Providers, routes, outlier rules and fallbacks: hosts, paths, models and weights (never keys)."""
    lines = []
    for host, provider in traffic.providers.items():
        model = provider.spec.openai_for(None).model or "(client's)"
        lines.append(f"LLMProvider {provider.metadata.name}: {host}{provider.spec.path}, model {model}")
    for host, route in traffic.routes.items():
        rules = []
        for rule in route.spec.rules:
            refs = ", ".join(
                f"{ref.provider_host or 'pool ' + str(ref.inference_pool)} ({ref.weight})"
                for ref in rule.backend_refs
            )
            rules.append(f"{rule.name or '(default)'} -> {refs}")
        lines.append(f"LLMRoute {route.metadata.name}: {host}: {'; '.join(rules)}")
    for host, dr in traffic.destination_rules.items():
        outlier = traffic.upstream(host, DEFAULT_CLIENT_PORT).outlier
        what = (
            f"outlier detection ({outlier.consecutive_5xx} consecutive 5xx, "
            f"{outlier.base_ejection_time_s:g}s)"
            if outlier
            else "no outlier detection"
        )
        lines.append(f"DestinationRule {dr.metadata.name}: {host}: {what}")
    lines += [f"fallback: {host} -> {target}" for host, target in traffic.fallbacks.items()]
    return lines
