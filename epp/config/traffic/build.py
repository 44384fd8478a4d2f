"""build_traffic: LLMProvider, LLMRoute, DestinationRule and VirtualService documents -> TrafficConfig.

Documents of other kinds are skipped (they are the loader's). Every problem found, in any document, is
collected into one TrafficConfigError; each names file, document (index, kind, metadata.name), field path
and reason, and none shows an API key (key fields are never echoed; expanded and literal key values are
scrubbed from messages).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from epp.config.envvars import expand_env, expansion_issues
from epp.config.errors import (
    ConfigIssue,
    DocumentRef,
    Loc,
    Redactor,
    format_loc,
    issues_from_validation_error,
    show_value,
)
from epp.config.traffic.config import Placed, TrafficConfig, TrafficConfigError, TrafficDocument
from epp.config.traffic.documents import ASM_API_VERSION, KubeDocument, LLMProvider, LLMRoute, normalise_host
from epp.config.traffic.istio import ISTIO_API_VERSIONS, DestinationRule, VirtualService
from epp.config.traffic.links import link

RawDocument = tuple[str, int, Mapping[str, Any]]  # (file path, 1-based document index, parsed YAML)
SecretReader = Callable[[str], str]

KINDS: dict[str, tuple[type[KubeDocument], tuple[str, ...]]] = {
    "LLMProvider": (LLMProvider, (ASM_API_VERSION,)),
    "LLMRoute": (LLMRoute, (ASM_API_VERSION,)),
    "DestinationRule": (DestinationRule, ISTIO_API_VERSIONS),
    "VirtualService": (VirtualService, ISTIO_API_VERSIONS),
}
_GROUPS = {v.split("/")[0] for _, versions in KINDS.values() for v in versions}


def read_secret_file(path: str) -> str:
    """The default SecretReader: the file's text without trailing whitespace."""
    return Path(path).read_text(encoding="utf-8").rstrip()


def build_traffic(
    docs: Iterable[RawDocument],
    env: Mapping[str, str],
    pools: Collection[str] | None = None,
    read_secret: SecretReader = read_secret_file,
) -> TrafficConfig:
    """Validate `docs` (raw, before `${ENV}` expansion) into a TrafficConfig, or raise TrafficConfigError.

    `pools` names the local InferencePools a backendRef may use (None: not checked).
    """
    config, issues, secrets = collect_traffic(docs, env, pools, read_secret)
    if issues:
        raise TrafficConfigError(issues, Redactor(secrets))
    return config


def collect_traffic(
    docs: Iterable[RawDocument],
    env: Mapping[str, str],
    pools: Collection[str] | None = None,
    read_secret: SecretReader = read_secret_file,
) -> tuple[TrafficConfig, list[ConfigIssue], set[str]]:
    """build_traffic without the raise: (config, issues, secret values to redact), for the config loader
    to merge the issues with its own into one error."""
    issues: list[ConfigIssue] = []
    secrets: set[str] = set()
    placed: list[Placed] = []
    broken: set[str] = set()  # hosts of invalid providers: references to them are not errors too
    order: dict[str, int] = {}
    for source, index, raw in docs:
        order.setdefault(source, len(order))
        doc = _parse(source, index, raw, env, read_secret, issues, secrets)
        if doc is not None:
            placed.append(doc)
        elif raw.get("kind") == "LLMProvider":
            spec = raw.get("spec")
            host = spec.get("host") if isinstance(spec, Mapping) else None
            if isinstance(host, str):
                broken.add(normalise_host(host))
    config = link(placed, pools, issues, broken)
    issues.sort(key=lambda i: (order.get(i.where.source, 0), i.where.index or 0))  # stable: per document
    return config, issues, secrets


def is_traffic_document(raw: object) -> bool:
    """True for a document build_traffic parses itself (the loader must not env-expand or keep it)."""
    return isinstance(raw, Mapping) and raw.get("kind") in KINDS and isinstance(raw.get("apiVersion"), str)


def _ref(source: str, index: int, raw: Mapping[str, Any]) -> DocumentRef:
    kind, metadata = raw.get("kind"), raw.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return DocumentRef(
        source, index, kind if isinstance(kind, str) else None, name if isinstance(name, str) else None
    )


def _kind_issue(kind: str, api_version: str) -> str | None:
    """None for someone else's document; a reason for a misspelt kind or a wrong apiVersion of ours."""
    if kind in KINDS:
        versions = KINDS[kind][1]
        if api_version in versions:
            return None
        return f"{kind} needs apiVersion {' or '.join(versions)} (got {show_value(api_version)})"
    ours = [
        k
        for k, (_, versions) in KINDS.items()
        if api_version.split("/")[0] in {v.split("/")[0] for v in versions}
    ]
    close = difflib.get_close_matches(kind, ours, n=1, cutoff=0.8) or [
        k for k in ours if k.lower() == kind.lower()
    ]
    if close:
        return f"unknown kind {show_value(kind)}: did you mean {close[0]}?"
    return None


def _parse(
    source: str,
    index: int,
    raw: Mapping[str, Any],
    env: Mapping[str, str],
    read_secret: SecretReader,
    issues: list[ConfigIssue],
    secrets: set[str],
) -> Placed | None:
    kind, api_version = raw.get("kind"), raw.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return None  # not a Kubernetes-style document: the loader reports it
    where = _ref(source, index, raw)
    reason = _kind_issue(kind, api_version)
    if reason is not None:
        issues.append(ConfigIssue(where, reason, "kind" if kind not in KINDS else "apiVersion"))
        return None
    if kind not in KINDS:
        return None
    expansion = expand_env(dict(raw), env)
    secrets |= expansion.used_values
    issues += expansion_issues(expansion, where)
    if expansion.missing or expansion.invalid:
        return None
    body: dict[str, Any] = expansion.value
    key_locs = _api_key_locs(body)
    for loc in key_locs:
        _load_key(body, loc, where, read_secret, issues, secrets)
    try:
        return Placed(where, cast(TrafficDocument, KINDS[kind][0].model_validate(body)))
    except ValidationError as exc:
        hidden = [*expansion.expanded_paths, *key_locs]
        issues.extend(issues_from_validation_error(exc, where, hidden=hidden))
        return None


def _api_key_locs(body: Mapping[str, Any]) -> list[Loc]:
    """Where an LLMProvider's apiKeys are (whatever the rest of the document looks like)."""
    spec = body.get("spec")
    configs = spec.get("configs") if isinstance(spec, Mapping) else None
    if not isinstance(configs, Mapping):
        return []
    found: list[tuple[Loc, Any]] = [(("spec", "configs", "defaultConfig"), configs.get("defaultConfig"))]
    by_rule = configs.get("routeSpecificConfigs")
    if isinstance(by_rule, Mapping):
        found += [(("spec", "configs", "routeSpecificConfigs", str(k)), v) for k, v in by_rule.items()]
    locs: list[Loc] = []
    for loc, cfg in found:
        openai = cfg.get("openAIConfig") if isinstance(cfg, Mapping) else None
        if isinstance(openai, Mapping) and "apiKey" in openai:
            locs.append((*loc, "openAIConfig", "apiKey"))
    return locs


def _load_key(
    body: dict[str, Any],
    loc: Loc,
    where: DocumentRef,
    read_secret: SecretReader,
    issues: list[ConfigIssue],
    secrets: set[str],
) -> None:
    """Replace `{secretFile: path}` at `loc` by the file's text; remember every key value for redaction."""
    parent: Any = body
    for part in loc[:-1]:
        parent = parent[part]
    value = parent[loc[-1]]
    if isinstance(value, str):
        secrets.add(value)
        return
    if not isinstance(value, Mapping):
        return  # the model rejects it without echoing it
    path = value.get("secretFile")
    if set(value) != {"secretFile"} or not isinstance(path, str) or not path:
        reason = "must be a string, ${ENV_VAR} or {secretFile: /path} (exactly that one key)"
        issues.append(ConfigIssue(where, reason, format_loc(loc)))
        parent[loc[-1]] = None
        return
    try:
        key = read_secret(path)
    except OSError as exc:
        issues.append(
            ConfigIssue(where, f"cannot read secretFile {path}: {exc.strerror or 'error'}", format_loc(loc))
        )
        parent[loc[-1]] = None
        return
    secrets.add(key)
    parent[loc[-1]] = key
