"""One YAML document -> a typed value (InferencePool, InferenceModel, picker config, static endpoints) or an
OtherDocument kept raw for later stages; problems come back as ConfigIssues, never as exceptions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from epp.config.cache_documents import LLM_CACHE_API_VERSIONS
from epp.config.endpoints import STATIC_ENDPOINTS_API_VERSIONS, StaticEndpoints
from epp.config.envvars import expand_env, expansion_issues
from epp.config.errors import ConfigIssue, DocumentRef, issues_from_validation_error, show_value
from epp.config.gie import GIE_GROUP, MODEL_API_VERSIONS, POOL_API_VERSIONS, InferenceModel, InferencePool
from epp.config.picker_config import EndpointPickerConfig
from epp.config.routing_strategy import picker_config_body

PICKER_API_VERSIONS = (f"{GIE_GROUP}/v1alpha1",)
KNOWN_API_VERSIONS: dict[str, tuple[str, ...]] = {
    "InferencePool": POOL_API_VERSIONS,
    "InferenceModel": MODEL_API_VERSIONS,
    "EndpointPickerConfig": PICKER_API_VERSIONS,
    "StaticEndpoints": STATIC_ENDPOINTS_API_VERSIONS,
    "LLMCache": LLM_CACHE_API_VERSIONS,  # read by epp.config.cache_build (the loader routes it there)
}
# In these API groups an unknown kind is a typo, not someone else's resource ...
OWN_GROUPS = frozenset({GIE_GROUP, "inference.networking.k8s.io", "epp.dev"})
# ... except GIE kinds that epp does not consume (yet); they are kept like any other document.
PASSED_THROUGH_GIE_KINDS = frozenset({"InferenceObjective", "InferencePoolImport", "InferenceModelRewrite"})


@dataclass(frozen=True, slots=True)
class OtherDocument:
    """A document of a kind epp's loader does not interpret (Gateway, HTTPRoute, LLMProvider, ...)."""

    kind: str
    api_version: str
    name: str | None
    source: str
    index: int
    body: dict[str, Any] = field(repr=False)  # env references expanded: may hold API keys


@dataclass(frozen=True, slots=True)
class PickerDocument:
    name: str | None
    config: EndpointPickerConfig


Parsed = InferencePool | InferenceModel | PickerDocument | StaticEndpoints | OtherDocument


@dataclass(slots=True)
class ParsedDocument:
    where: DocumentRef
    value: Parsed | None = None
    issues: list[ConfigIssue] = field(default_factory=list)
    used_values: set[str] = field(default_factory=set, repr=False)


def parse_document(raw: Any, source: str, index: int, env: Mapping[str, str]) -> ParsedDocument:
    """Check the header, expand `${NAME}` references and validate the document's kind."""
    if not isinstance(raw, dict):
        where = DocumentRef(source, index)
        got = type(raw).__name__ if isinstance(raw, list | dict) else show_value(raw)
        return ParsedDocument(
            where, issues=[ConfigIssue(where, f"must be a mapping with apiVersion and kind ({got})")]
        )
    kind, api_version, metadata = raw.get("kind"), raw.get("apiVersion"), raw.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    where = DocumentRef(
        source, index, kind if isinstance(kind, str) else None, name if isinstance(name, str) else None
    )
    result = ParsedDocument(where)
    for key, value in (("apiVersion", api_version), ("kind", kind)):
        if not isinstance(value, str) or not value.strip():
            reason = "required field is missing" if value is None else "must be a non-empty string"
            result.issues.append(ConfigIssue(where, reason, key))
    if result.issues:
        return result

    expansion = expand_env(raw, env)
    result.used_values = expansion.used_values
    result.issues += expansion_issues(expansion, where)
    if result.issues:
        return result
    doc: dict[str, Any] = expansion.value
    assert isinstance(kind, str) and isinstance(api_version, str)

    versions = KNOWN_API_VERSIONS.get(kind)
    if versions is not None and api_version not in versions:
        reason = f"{kind} needs one of {', '.join(versions)} (got {show_value(api_version)})"
        result.issues.append(ConfigIssue(where, reason, "apiVersion"))
    elif (
        versions is None and api_version.split("/")[0] in OWN_GROUPS and kind not in PASSED_THROUGH_GIE_KINDS
    ):
        expected = ", ".join(k for k, v in KNOWN_API_VERSIONS.items() if api_version in v) or "none"
        reason = f"unknown kind for {api_version}: expected one of {expected} (got {show_value(kind)})"
        result.issues.append(ConfigIssue(where, reason, "kind"))
    elif versions is None:
        result.value = OtherDocument(kind, api_version, where.name, source, index, doc)
    else:
        _validate_known(kind, doc, result, expansion.expanded_paths)
    return result


def _validate_known(kind: str, doc: dict[str, Any], result: ParsedDocument, hidden: list[Any]) -> None:
    if kind == "EndpointPickerConfig":
        body = picker_config_body(doc)
        try:
            result.value = PickerDocument(result.where.name, EndpointPickerConfig.model_validate(body))
        except ValidationError as exc:
            issues = issues_from_validation_error(exc, result.where, hidden=hidden)
            # The model's cross-reference check has no field path; report each bad reference precisely.
            precise = picker_reference_issues(body, result.where)
            result.issues += [i for i in issues if i.path or not precise] + precise
        return
    try:
        if kind == "InferencePool":
            result.value = InferencePool.model_validate(doc)
        elif kind == "InferenceModel":
            result.value = InferenceModel.model_validate(doc)
        elif kind == "StaticEndpoints":
            result.value = StaticEndpoints.model_validate(doc)
        else:
            result.issues.append(ConfigIssue(result.where, f"{kind} is read by epp.config.cache_build"))
    except ValidationError as exc:
        result.issues += issues_from_validation_error(exc, result.where, hidden=hidden)


def picker_reference_issues(body: Mapping[str, Any], where: DocumentRef) -> list[ConfigIssue]:
    """Repeated plugin names and profile references to undefined plugins, each with its field path."""
    issues = []
    defined: dict[str, int] = {}
    plugins = body.get("plugins")
    for i, plugin in enumerate(plugins if isinstance(plugins, list) else []):
        name = (plugin.get("name") or plugin.get("type")) if isinstance(plugin, dict) else None
        if not isinstance(name, str):
            continue
        if name in defined:
            reason = f"plugin name {show_value(name)} is already used by plugins[{defined[name]}]"
            reason += " (name defaults to type)"
            issues.append(ConfigIssue(where, reason, f"plugins[{i}].name"))
        else:
            defined[name] = i
    profiles = body.get("schedulingProfiles")
    for p, profile in enumerate(profiles if isinstance(profiles, list) else []):
        refs = profile.get("plugins") if isinstance(profile, dict) else None
        for r, ref in enumerate(refs if isinstance(refs, list) else []):
            target = ref.get("pluginRef") if isinstance(ref, dict) else None
            if isinstance(target, str) and target not in defined:
                reason = f"unknown plugin {show_value(target)} (defined: {', '.join(defined) or 'none'})"
                issues.append(ConfigIssue(where, reason, f"schedulingProfiles[{p}].plugins[{r}].pluginRef"))
    return issues
