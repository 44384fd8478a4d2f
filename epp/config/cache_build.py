"""collect_cache: the cache WasmPlugin, its ConfigMap and the LLMCache document -> CacheSettings.

Every problem is a ConfigIssue naming file, document, field and reason; none shows the Redis password (the
field's input is never echoed and its value, literal or expanded, is handed back for the loader's Redactor).
epp.config.cache says where each setting comes from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from epp.config.cache import (
    ANY_PATTERN,
    DEFAULT_EXPIRE_S,
    DEFAULT_REDIS_ADDRESS,
    Backend,
    CacheSettings,
    RedisSettings,
    SemanticSettings,
)
from epp.config.cache_documents import (
    CACHE_PLUGIN_KEYS,
    LLM_CACHE_API_VERSIONS,
    REDIS_KEYS,
    REDIS_PASSWORD,
    WASM_API_VERSIONS,
    CacheConfigMap,
    CacheWasmPlugin,
    LLMCache,
    LLMCacheSpec,
    RedisData,
)
from epp.config.envvars import expand_env, expansion_issues
from epp.config.errors import (
    ConfigError,
    ConfigIssue,
    DocumentRef,
    Redactor,
    issues_from_validation_error,
)

RawDocument = tuple[str, int, Mapping[str, Any]]  # (source, 1-based document index, parsed YAML)
ENVIRONMENT = DocumentRef("environment")
_KINDS: dict[str, type[BaseModel]] = {
    "LLMCache": LLMCache,
    "WasmPlugin": CacheWasmPlugin,
    "ConfigMap": CacheConfigMap,
}


def is_cache_document(raw: object) -> bool:
    """True for a document collect_cache reads (the loader must not keep it as an OtherDocument)."""
    if not isinstance(raw, Mapping):
        return False
    kind, version = raw.get("kind"), raw.get("apiVersion")
    if kind == "LLMCache":
        return version in LLM_CACHE_API_VERSIONS
    spec, data = raw.get("spec"), raw.get("data")
    if kind == "WasmPlugin" and version in WASM_API_VERSIONS and isinstance(spec, Mapping):
        config, url = spec.get("pluginConfig"), spec.get("url")
        by_keys = isinstance(config, Mapping) and bool(CACHE_PLUGIN_KEYS & set(config))
        return by_keys or (isinstance(url, str) and "llm-cache" in url)
    if kind == "ConfigMap" and version == "v1" and isinstance(data, Mapping):
        return any(key in data for key in REDIS_KEYS)
    return False


def load_cache_settings(docs: Iterable[RawDocument], env: Mapping[str, str]) -> CacheSettings | None:
    """collect_cache that raises ConfigError: None when no document configures the cache."""
    settings, issues, secrets = collect_cache(docs, env)
    if issues:
        raise ConfigError(issues, Redactor(secrets))
    return settings


def collect_cache(
    docs: Iterable[RawDocument], env: Mapping[str, str]
) -> tuple[CacheSettings | None, list[ConfigIssue], set[str]]:
    """(settings or None, issues, secret values to redact) for the loader to merge with its own."""
    issues: list[ConfigIssue] = []
    secrets: set[str] = set()
    found: dict[type[BaseModel], tuple[DocumentRef, Any]] = {}
    for source, index, raw in docs:
        if not is_cache_document(raw):
            continue
        where = _ref(source, index, raw)
        model_type = _KINDS[str(raw["kind"])]
        parsed = _parse(model_type, raw, where, env, issues, secrets)
        if parsed is None:
            continue
        if model_type in found:
            first = found[model_type][0]
            what = "ConfigMap with REDIS_* settings" if model_type is CacheConfigMap else raw["kind"]
            reason = f"only one cache {what} is allowed (first: {first.source} document {first.index})"
            issues.append(ConfigIssue(where, reason))
            continue
        found[model_type] = (where, parsed)
    if not found and not issues:
        return None, issues, secrets
    plugin = found.get(CacheWasmPlugin)
    configmap = found.get(CacheConfigMap)
    llm = found.get(LLMCache)
    redis = _redis(configmap[1].data if configmap else None, env, issues, secrets)
    settings = _assemble(plugin, llm, redis, issues)
    return (None if issues else settings), issues, secrets


def settings_from_env(env: Mapping[str, str]) -> CacheSettings:
    """The settings without any document: defaults and REDIS_* of `env`; raises ConfigError."""
    issues: list[ConfigIssue] = []
    secrets: set[str] = set()
    redis = _redis(None, env, issues, secrets)
    if issues:
        raise ConfigError(issues, Redactor(secrets))
    return CacheSettings(redis=redis, default_ttl_s=float(redis.expire_s))


def _ref(source: str, index: int, raw: Mapping[str, Any]) -> DocumentRef:
    metadata = raw.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return DocumentRef(source, index, str(raw.get("kind")), name if isinstance(name, str) else None)


def _parse(
    model_type: type[BaseModel],
    raw: Mapping[str, Any],
    where: DocumentRef,
    env: Mapping[str, str],
    issues: list[ConfigIssue],
    secrets: set[str],
) -> Any:
    expansion = expand_env(dict(raw), env)
    secrets |= expansion.used_values
    issues += expansion_issues(expansion, where)
    if expansion.missing or expansion.invalid:
        return None
    body: dict[str, Any] = expansion.value
    data = body.get("data")
    if (
        model_type is CacheConfigMap
        and isinstance(data, Mapping)
        and isinstance(data.get(REDIS_PASSWORD), str)
    ):
        secrets.add(data[REDIS_PASSWORD])
    hidden = [*expansion.expanded_paths, ("data", REDIS_PASSWORD)]
    try:
        return model_type.model_validate(body)
    except ValidationError as exc:
        issues.extend(issues_from_validation_error(exc, where, hidden=hidden))
        return None


def _redis(
    data: RedisData | None, env: Mapping[str, str], issues: list[ConfigIssue], secrets: set[str]
) -> RedisSettings:
    """Defaults, then the ConfigMap's data, then the environment's REDIS_* variables."""
    layers = [data] if data is not None else []
    from_env = {k: env[k] for k in REDIS_KEYS if k in env}
    if from_env:
        if from_env.get(REDIS_PASSWORD):
            secrets.add(from_env[REDIS_PASSWORD])
        try:
            layers.append(RedisData.model_validate(from_env))
        except ValidationError as exc:
            issues.extend(issues_from_validation_error(exc, ENVIRONMENT, hidden=[(REDIS_PASSWORD,)]))
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(
            {
                k: getattr(layer, k)
                for k in ("address", "password", "expired_seconds")
                if getattr(layer, k) is not None
            }
        )
    return RedisSettings(
        address=values.get("address", DEFAULT_REDIS_ADDRESS),
        password=values.get("password", SecretStr("")),
        expire_s=values.get("expired_seconds", DEFAULT_EXPIRE_S),
    )


def _assemble(
    plugin: tuple[DocumentRef, CacheWasmPlugin] | None,
    llm: tuple[DocumentRef, LLMCache] | None,
    redis: RedisSettings,
    issues: list[ConfigIssue],
) -> CacheSettings:
    chosen: dict[str, Any] = {"host_match": ANY_PATTERN, "path_match": ANY_PATTERN, "fail_open": True}
    service_url = None
    if plugin is not None:
        config, plugin_spec = plugin[1].spec.plugin_config, plugin[1].spec
        chosen = {
            "host_match": config.host_match,
            "path_match": config.path_match,
            "fail_open": plugin_spec.fail_strategy == "FAIL_OPEN",  # unset: FAIL_CLOSE, as in Istio
        }
        service_url = f"http://{config.service}:{config.port}"
    extra: dict[str, Any] = {}
    ttl = float(redis.expire_s)
    backend: Backend = "service" if service_url else "in-process"
    if llm is not None:
        where, spec = llm[0], llm[1].spec
        _check_overlap(plugin, where, spec, issues)
        for name in ("host_match", "path_match"):
            if getattr(spec, name) is not None:
                chosen[name] = getattr(spec, name)
        if spec.fail_strategy is not None:
            chosen["fail_open"] = spec.fail_strategy == "FAIL_OPEN"
        service_url = spec.service_url.rstrip("/") if spec.service_url else service_url
        backend = "service" if service_url else "in-process"
        if spec.backend is not None:
            backend = "service" if spec.backend == "Service" else "in-process"
            if backend == "service" and service_url is None:
                reason = "backend Service needs serviceURL here or a cache WasmPlugin naming the service"
                issues.append(ConfigIssue(where, reason, "spec.backend"))
        s = spec.semantic
        extra = {
            "lookup_timeout_s": spec.lookup_timeout,
            "memory_bytes": spec.memory_bytes,
            "max_entry_bytes": spec.max_entry_bytes,
            "cache_sampled": spec.cache_sampled,
            "namespace": spec.namespace,
            "semantic": SemanticSettings(s.enabled, tuple(s.models), tuple(s.routes), s.threshold),
        }
        ttl = spec.default_ttl if spec.default_ttl is not None else ttl
    return CacheSettings(
        host_match=re.compile(chosen["host_match"]),
        path_match=re.compile(chosen["path_match"]),
        fail_open=chosen["fail_open"],
        backend=backend,
        service_url=service_url,
        redis=redis,
        default_ttl_s=ttl,
        plugin=plugin[1].metadata.name if plugin else None,
        **extra,
    )


def _check_overlap(
    plugin: tuple[DocumentRef, CacheWasmPlugin] | None,
    where: DocumentRef,
    spec: LLMCacheSpec,
    issues: list[ConfigIssue],
) -> None:
    """A setting given by both the WasmPlugin and the LLMCache document is an error: which would win?"""
    if plugin is None:
        return
    plugin_spec = plugin[1].spec
    in_plugin = {
        "host_match": "host_match" in plugin_spec.plugin_config.model_fields_set,
        "path_match": "path_match" in plugin_spec.plugin_config.model_fields_set,
        "fail_strategy": plugin_spec.fail_strategy is not None,
    }
    fields = (("hostMatch", "host_match"), ("pathMatch", "path_match"), ("failStrategy", "fail_strategy"))
    for alias, name in fields:
        if name in spec.model_fields_set and in_plugin[name]:
            theirs = "spec.failStrategy" if name == "fail_strategy" else f"spec.pluginConfig.{name}"
            reason = f'also set by WasmPlugin "{plugin[0].name}" ({theirs}): set it in one place'
            issues.append(ConfigIssue(where, reason, f"spec.{alias}"))
