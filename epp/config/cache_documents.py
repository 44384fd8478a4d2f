"""pydantic models of the cache's documents: the mesh's cache `WasmPlugin`, its `ConfigMap`, epp's `LLMCache`.

- `WasmPlugin` (extensions.istio.io/v1alpha1) with `spec.pluginConfig` {host_match, path_match, service, port}
  and `spec.failStrategy` (Istio's FAIL_OPEN | FAIL_CLOSE; unset means FAIL_CLOSE, as in Istio). The rest of
  Istio's WasmPlugin fields (selector, url, phase, priority, match, ...) say where the mesh runs the plugin:
  accepted and ignored. `host_match` / `path_match` are Python `re` patterns matched against the whole host
  (lower-case, without port) and the whole path (without query), as Istio matches its regexes.
- `ConfigMap` (v1) whose `data` holds REDIS_ADDRESS (host:port), REDIS_PASSWORD, REDIS_EXPIRED_SECONDS (a
  positive integer): the default cache service's environment. Other keys in it are someone else's: ignored.
- `LLMCache` (epp.dev/v1alpha1): what the seed cannot say (see LLMCacheSpec).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    field_validator,
)

from epp.config.endpoints import parse_address
from epp.config.traffic.documents import Host, KubeDocument, PlacedModel, StrictModel, checked_regex
from epp.health.outlier_settings import Duration

WASM_API_VERSIONS = ("extensions.istio.io/v1alpha1",)
LLM_CACHE_API_VERSIONS = ("epp.dev/v1alpha1",)
REDIS_ADDRESS, REDIS_PASSWORD, REDIS_EXPIRED_SECONDS = (
    "REDIS_ADDRESS",
    "REDIS_PASSWORD",
    "REDIS_EXPIRED_SECONDS",
)
REDIS_KEYS = (REDIS_ADDRESS, REDIS_PASSWORD, REDIS_EXPIRED_SECONDS)
CACHE_PLUGIN_KEYS = frozenset({"host_match", "path_match"})  # a WasmPlugin with these is the cache's
# Istio WasmPlugin fields that place or fetch the plugin: meaningless for epp.
ISTIO_WASM_FIELDS = frozenset(
    {
        "selector", "targetRef", "targetRefs", "url", "sha256", "imagePullPolicy", "imagePullSecret",
        "pluginName", "phase", "priority", "vmConfig", "match", "type",
    }
)  # fmt: skip
FailStrategy = Literal["FAIL_OPEN", "FAIL_CLOSE"]
MAX_TTL_S = 366 * 86400.0
MAX_LOOKUP_TIMEOUT_S = 10.0


def _port(value: Any) -> int:
    """A port as the plugin writes it: a string ("80") or an int."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("must be a port in 1..65535 (a number or a string of digits)")
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string host:port")
    host, port = parse_address(value)
    return f"{host}:{port}"


def _seconds(value: Any) -> int:
    """REDIS_EXPIRED_SECONDS: a positive integer, written as a string (ConfigMap data) or a number."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isascii() and text.isdigit():
        text = int(text)
    if isinstance(text, bool) or not isinstance(text, int) or not 1 <= text <= MAX_TTL_S:
        raise ValueError(f"must be a positive integer number of seconds (at most {MAX_TTL_S:.0f})")
    return text


def _password(value: Any) -> Any:
    # Checked here so the error never echoes the value (pydantic's would, for a number).
    if value is not None and not isinstance(value, str | SecretStr):
        raise ValueError("must be a string")
    return value


Regex = Annotated[str, AfterValidator(checked_regex)]
Port = Annotated[int, BeforeValidator(_port)]
RedisAddress = Annotated[str, BeforeValidator(_address)]
RedisSeconds = Annotated[int, BeforeValidator(_seconds)]
Password = Annotated[SecretStr, BeforeValidator(_password)]


class CachePluginConfig(StrictModel):
    host_match: Regex = ".*"
    path_match: Regex = ".*"
    service: Host
    port: Port = 80


class CachePluginSpec(PlacedModel):
    placement_fields: ClassVar[tuple[str, ...]] = tuple(ISTIO_WASM_FIELDS)

    plugin_config: CachePluginConfig = Field(alias="pluginConfig")
    fail_strategy: FailStrategy | None = Field(default=None, alias="failStrategy")


class CacheWasmPlugin(KubeDocument):
    spec: CachePluginSpec


class RedisData(BaseModel):
    """The REDIS_* keys of a ConfigMap's data (or of the process environment); others are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    address: RedisAddress | None = Field(default=None, alias="REDIS_ADDRESS")
    password: Password | None = Field(default=None, alias="REDIS_PASSWORD")
    expired_seconds: RedisSeconds | None = Field(default=None, alias="REDIS_EXPIRED_SECONDS")


class CacheConfigMap(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)  # binaryData, immutable

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    data: RedisData


def _globs(value: list[str]) -> list[str]:
    if any(not g for g in value):
        raise ValueError("globs must be non-empty strings")
    return value


Globs = Annotated[list[str], AfterValidator(_globs)]


class SemanticSpec(StrictModel):
    """The semantic tier: off unless enabled; then for requests whose model and path match a glob each."""

    enabled: StrictBool = False
    models: Globs = Field(default_factory=lambda: ["*"])
    routes: Globs = Field(default_factory=lambda: ["*"])  # request paths, e.g. /v1/chat/completions
    threshold: float | None = Field(default=None, gt=0, le=1)  # None: the tier's default

    @field_validator("threshold", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or (value is not None and not isinstance(value, int | float)):
            raise ValueError("must be a number in (0, 1]")
        return value


class LLMCacheSpec(StrictModel):
    """epp's own cache settings; selection and fail strategy here or in the WasmPlugin (not both)."""

    backend: Literal["Service", "InProcess"] | None = (
        None  # default: Service with a WasmPlugin, else InProcess
    )
    service_url: str | None = Field(default=None, alias="serviceURL", pattern=r"^https?://[^/?#\s]+/?$")
    host_match: Regex | None = Field(default=None, alias="hostMatch")
    path_match: Regex | None = Field(default=None, alias="pathMatch")
    fail_strategy: FailStrategy | None = Field(default=None, alias="failStrategy")
    default_ttl: Duration | None = Field(default=None, alias="defaultTTL", le=MAX_TTL_S)
    lookup_timeout: Duration = Field(default=0.05, alias="lookupTimeout", le=MAX_LOOKUP_TIMEOUT_S)
    memory_bytes: StrictInt = Field(default=64 * 1024 * 1024, alias="memoryBytes", ge=0)  # 0: no LRU
    max_entry_bytes: StrictInt = Field(default=1 << 20, alias="maxEntryBytes", ge=1)
    cache_sampled: StrictBool = Field(default=False, alias="cacheSampled")
    namespace: str = Field(default="", max_length=256)
    semantic: SemanticSpec = Field(default_factory=SemanticSpec)


class LLMCache(KubeDocument):
    spec: LLMCacheSpec = Field(default_factory=LLMCacheSpec)
