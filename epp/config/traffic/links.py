"""Cross-document checks of traffic documents: unique hosts, references that resolve, usable weights."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

from epp.config.errors import ConfigIssue, DocumentRef, show_value
from epp.config.traffic.config import Placed, TrafficConfig
from epp.config.traffic.documents import LLMProvider, LLMRoute
from epp.config.traffic.istio import DestinationRule, VirtualService


def _at(ref: DocumentRef) -> str:
    kind = f" ({ref.kind} {show_value(ref.name)})" if ref.kind and ref.name else ""
    return f"{ref.source} document {ref.index}{kind}"


Hosted = TypeVar("Hosted", LLMProvider, LLMRoute, DestinationRule)


def _unique(
    placed: list[Placed], kind: type[Hosted], issues: list[ConfigIssue], what: str
) -> dict[str, tuple[DocumentRef, Hosted]]:
    """Documents of `kind` by spec.host; a repeated host is an issue naming the first definition."""
    out: dict[str, tuple[DocumentRef, Hosted]] = {}
    for p in placed:
        doc = p.doc
        if isinstance(doc, kind):
            host = doc.spec.host
            if host in out:
                reason = f"{what} for host {show_value(host)} is already defined in {_at(out[host][0])}"
                issues.append(ConfigIssue(p.where, reason, "spec.host"))
            else:
                out[host] = (p.where, doc)
    return out


def link(
    placed: list[Placed],
    pools: Collection[str] | None,
    issues: list[ConfigIssue],
    broken: Collection[str] = (),
) -> TrafficConfig:
    """Check references between documents; returns the config (the caller raises if issues were added).

    `broken` holds hosts of LLMProviders that failed validation: references to them are not reported again.
    """
    providers = _unique(placed, LLMProvider, issues, "an LLMProvider")
    routes = _unique(placed, LLMRoute, issues, "an LLMRoute")
    rules = _unique(placed, DestinationRule, issues, "a DestinationRule")
    rule_names = _check_routes(routes, providers, pools, issues, broken)
    _check_route_configs(providers, rule_names, issues)
    fallbacks = _fallbacks(placed, providers, issues, broken)
    return TrafficConfig(
        providers={h: doc for h, (_, doc) in providers.items()},
        routes={h: doc for h, (_, doc) in routes.items()},
        destination_rules={h: doc for h, (_, doc) in rules.items()},
        fallbacks=fallbacks,
    )


def _check_routes(
    routes: dict[str, tuple[DocumentRef, LLMRoute]],
    providers: dict[str, tuple[DocumentRef, LLMProvider]],
    pools: Collection[str] | None,
    issues: list[ConfigIssue],
    broken: Collection[str],
) -> dict[str, set[str]]:
    """Backend references and weights; returns provider host -> names of the rules that send to it."""
    rule_names: dict[str, set[str]] = {}
    for where, route in routes.values():
        seen: dict[str, int] = {}
        for i, rule in enumerate(route.spec.rules):
            at = f"spec.rules[{i}]"
            if rule.name is not None:
                if rule.name in seen:
                    reason = (
                        f"rule name {show_value(rule.name)} is already used by spec.rules[{seen[rule.name]}]"
                    )
                    issues.append(ConfigIssue(where, reason, f"{at}.name"))
                seen.setdefault(rule.name, i)
            if all(ref.provider_host is None for ref in rule.backend_refs):
                for field in ("timeout", "retries"):
                    if field in rule.model_fields_set:
                        reason = f"{field} applies to provider backends; this rule has only InferencePools"
                        issues.append(ConfigIssue(where, reason, f"{at}.{field}"))
            if sum(ref.weight for ref in rule.backend_refs) == 0:
                reason = "weights sum to 0: at least one backendRef needs a weight > 0"
                issues.append(ConfigIssue(where, reason, f"{at}.backendRefs"))
            for j, ref in enumerate(rule.backend_refs):
                if ref.provider_host is not None:
                    if ref.provider_host not in providers and ref.provider_host not in broken:
                        known = ", ".join(sorted(providers)) or "none"
                        reason = f"no LLMProvider has host {show_value(ref.provider_host)} (known: {known})"
                        issues.append(ConfigIssue(where, reason, f"{at}.backendRefs[{j}].providerHost"))
                    elif rule.name is not None and ref.provider_host in providers:
                        rule_names.setdefault(ref.provider_host, set()).add(rule.name)
                elif pools is not None and ref.inference_pool not in pools:
                    known = ", ".join(sorted(pools)) or "none"
                    reason = f"no InferencePool named {show_value(ref.inference_pool)} (known: {known})"
                    issues.append(ConfigIssue(where, reason, f"{at}.backendRefs[{j}].inferencePool"))
    return rule_names


def _check_route_configs(
    providers: dict[str, tuple[DocumentRef, LLMProvider]],
    rule_names: dict[str, set[str]],
    issues: list[ConfigIssue],
) -> None:
    """A routeSpecificConfigs key must name an LLMRoute rule that sends to this provider (typos)."""
    for host, (where, provider) in providers.items():
        names = rule_names.get(host, set())
        for key in provider.spec.configs.by_rule:
            if key not in names:
                known = ", ".join(sorted(names)) or "none"
                reason = f"no LLMRoute rule named {show_value(key)} sends to this provider (rules: {known})"
                issues.append(ConfigIssue(where, reason, f'spec.configs.routeSpecificConfigs["{key}"]'))


def _fallbacks(
    placed: list[Placed],
    providers: dict[str, tuple[DocumentRef, LLMProvider]],
    issues: list[ConfigIssue],
    broken: Collection[str],
) -> dict[str, str]:
    """destination host -> fallback host, from every VirtualService."""
    out: dict[str, tuple[str, str]] = {}  # host -> (fallback host, where it was set)
    for p in placed:
        if not isinstance(p.doc, VirtualService):
            continue
        for i, http in enumerate(p.doc.spec.http):
            if len(http.route) > 1:
                reason = "epp reads VirtualServices only for fallback: one route destination per http entry"
                issues.append(ConfigIssue(p.where, reason, f"spec.http[{i}].route"))
                continue
            for j, dest in enumerate(http.route):
                at = f"spec.http[{i}].route[{j}]"
                target = dest.fallback.target.host if dest.fallback else None
                if dest.destination.host in broken or target in broken:
                    continue
                problem = _fallback_problem(p.doc, dest.destination.host, target, providers, out)
                if problem is not None:
                    issues.append(ConfigIssue(p.where, problem[1], f"{at}.{problem[0]}"))
                elif target is not None:
                    out[dest.destination.host] = (target, f"{_at(p.where)}, {at}")
    return {host: target for host, (target, _) in out.items()}


def _fallback_problem(
    vs: VirtualService,
    host: str,
    target: str | None,
    providers: dict[str, tuple[DocumentRef, LLMProvider]],
    seen: dict[str, tuple[str, str]],
) -> tuple[str, str] | None:
    """(field, reason) for a bad route destination or fallback, else None."""
    known = ", ".join(sorted(providers)) or "none"
    if host not in vs.spec.hosts:
        got = show_value(host)
        return (
            "destination.host",
            f"must be one of spec.hosts: epp does not reroute by VirtualService ({got})",
        )
    if target is None:
        return None
    if host not in providers:
        return "destination.host", f"a fallback needs an LLMProvider with host {show_value(host)} ({known})"
    if target not in providers:
        reason = f"fallback to unknown host {show_value(target)}: no LLMProvider has it (known: {known})"
        return "fallback.target.host", reason
    if target == host:
        return "fallback.target.host", "a host cannot fall back to itself"
    if host in seen:
        first, where = seen[host]
        return (
            "fallback.target.host",
            f"{show_value(host)} already falls back to {show_value(first)} ({where})",
        )
    return None
