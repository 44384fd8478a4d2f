"""pydantic models of ASM's `LLMProvider` and `LLMRoute` (istio.alibabacloud.com/v1beta1) documents.

Field policy: our fields are checked strictly (a misspelt one is an "unknown field" error); mesh fields
that only say *where* the mesh applies a document (`workloadSelector`, `gateways`, `exportTo`) are accepted
and ignored, since epp is the one place that applies it. `status` and any `metadata` are accepted.

Extras beyond ASM (all optional, on `LLMProvider.spec`):
  headers: {name: value}          added to every upstream request (after the client's headers)
  queryParams: {name: value}      added to the upstream URL's query
  passClientCredentials: false    true: forward the client's Authorization header instead of dropping it
                                  (apiKey, if set, is used only when the client sent none)
  keepClientModel: false          true: a request that names a model keeps it (openAIConfig.model only
                                  fills in a missing one)
  tls: {verify: true, caFile: /path/ca.pem, sni: name}   how to check the provider's certificate
on `LLMRoute.spec.rules[].backendRefs[]`: `inferencePool: <name>` instead of `providerHost`, naming
a pool epp serves locally; and on `LLMRoute.spec.rules[]`:
  timeout: 30s                    the request's deadline until the answer starts (all attempts together);
                                  past it the client gets a 504 JSON error
  retries: 1                      how many more providers a request that failed before its first byte may
                                  try (fallbacks, then the rule's other backends); 0: the client gets the 5xx

`apiKey` is a literal, `${ENV}` (expanded by build_traffic) or `{secretFile: /path}` (the file's text,
trailing whitespace stripped); once validated it is a SecretStr and never shown.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from epp.health.outlier_settings import Duration

ASM_API_VERSION = "istio.alibabacloud.com/v1beta1"
# Where-to-apply fields of the mesh: meaningless for epp, so accepted and ignored.
MESH_PLACEMENT_FIELDS = ("workloadSelector", "gateways", "exportTo")
MAX_REGEX_CHARS = 1024  # Python's re backtracks (Istio uses RE2); long patterns are a smell
MAX_RETRIES = 10  # each retry is a whole provider request; more is a misconfiguration, not resilience
MAX_TIMEOUT_S = 24 * 3600.0

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


def normalise_host(host: str) -> str:
    """Lower-case, without a trailing dot: how hosts are compared everywhere in traffic."""
    return host.strip().lower().rstrip(".")


def _host(value: str) -> str:
    host = normalise_host(value)
    if not _HOST_RE.match(host):
        raise ValueError(f"must be a DNS host name without port or scheme (got {value!r})")
    return host


def _path(value: str) -> str:
    if not value.startswith("/") or "?" in value or "#" in value:
        raise ValueError(f"must be an absolute path without query, starting with / (got {value!r})")
    return value


Host = Annotated[str, AfterValidator(_host)]
Path = Annotated[str, AfterValidator(_path)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PlacedModel(StrictModel):
    """A spec that also accepts (and ignores) the mesh's placement fields (`placement_fields`)."""

    placement_fields: ClassVar[tuple[str, ...]] = MESH_PLACEMENT_FIELDS

    @model_validator(mode="before")
    @classmethod
    def _drop_placement(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in cls.placement_fields}
        return data


class Metadata(BaseModel):
    """Only `name` matters; labels, annotations, namespace etc. are accepted as Kubernetes writes them."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    namespace: str | None = None


class OpenAIConfig(StrictModel):
    """What epp sets on an OpenAI-style request; unset fields leave the client's value."""

    model: str | None = Field(default=None, min_length=1)
    stream: StrictBool | None = None
    api_key: SecretStr | None = Field(default=None, alias="apiKey")

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_is_text(cls, value: Any) -> Any:
        # Checked here so the error never echoes the value (pydantic's would, for a number).
        if value is not None and not isinstance(value, str | SecretStr):
            raise ValueError("must be a string, ${ENV_VAR} or {secretFile: /path}")
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    def over(self, base: OpenAIConfig) -> OpenAIConfig:
        """This config with unset fields taken from `base` (a route-specific config over the default)."""
        merged = {name: getattr(base, name) for name in type(self).model_fields}
        merged.update({name: getattr(self, name) for name in self.model_fields_set})
        return OpenAIConfig.model_validate(merged)


class ProviderConfig(StrictModel):
    openai: OpenAIConfig = Field(alias="openAIConfig")


class ProviderConfigs(StrictModel):
    default: ProviderConfig | None = Field(default=None, alias="defaultConfig")
    by_rule: dict[str, ProviderConfig] = Field(default_factory=dict, alias="routeSpecificConfigs")


class ProviderTLS(StrictModel):
    """epp extra: certificate checking for the provider (a DestinationRule's tls overrides it)."""

    verify: StrictBool = True
    ca_file: str | None = Field(default=None, alias="caFile", min_length=1)
    sni: str | None = Field(default=None, min_length=1)


def _header_names(value: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, v in value.items():
        if not _HEADER_NAME_RE.match(name.lower()):
            raise ValueError(f"{name!r} is not a valid header name")
        if "\r" in v or "\n" in v:
            raise ValueError(f"header {name!r}: value must not contain CR or LF")
        out[name.lower()] = v
    return out


class LLMProviderSpec(PlacedModel):
    host: Host
    path: Path = "/v1/chat/completions"
    configs: ProviderConfigs = Field(default_factory=ProviderConfigs)
    headers: Annotated[dict[str, str], AfterValidator(_header_names)] = Field(default_factory=dict)
    query_params: dict[str, str] = Field(default_factory=dict, alias="queryParams")
    pass_client_credentials: StrictBool = Field(default=False, alias="passClientCredentials")
    keep_client_model: StrictBool = Field(default=False, alias="keepClientModel")
    tls: ProviderTLS = Field(default_factory=ProviderTLS)

    def openai_for(self, rule: str | None) -> OpenAIConfig:
        """routeSpecificConfigs[rule] over defaultConfig (field by field), or an empty config."""
        default = self.configs.default.openai if self.configs.default else OpenAIConfig()
        specific = self.configs.by_rule.get(rule) if rule is not None else None
        return specific.openai.over(default) if specific else default


def checked_regex(pattern: str) -> str:
    """`pattern` if it compiles and is not too long (a pydantic AfterValidator)."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise ValueError(f"regex is longer than {MAX_REGEX_CHARS} characters")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"regex does not compile: {exc}") from None
    return pattern


class StringMatch(StrictModel):
    """Exactly one of exact, prefix, regex (a full match, as in Istio)."""

    exact: str | None = None
    prefix: str | None = None
    regex: Annotated[str, AfterValidator(checked_regex)] | None = None

    @model_validator(mode="after")
    def _one(self) -> StringMatch:
        if len(self.model_fields_set & {"exact", "prefix", "regex"}) != 1:
            raise ValueError("needs exactly one of exact, prefix, regex")
        return self


class RouteMatch(StrictModel):
    """All of `headers` must match (header names are case-insensitive)."""

    headers: dict[str, StringMatch] = Field(min_length=1)

    @field_validator("headers")
    @classmethod
    def _lower(cls, value: dict[str, StringMatch]) -> dict[str, StringMatch]:
        return {name.lower(): m for name, m in value.items()}


class BackendRef(StrictModel):
    """A provider host or (epp extra) a local InferencePool, with a weight (default 1)."""

    provider_host: Host | None = Field(default=None, alias="providerHost")
    inference_pool: str | None = Field(default=None, alias="inferencePool", min_length=1)
    weight: StrictInt = Field(default=1, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _one_target(self) -> BackendRef:
        if (self.provider_host is None) == (self.inference_pool is None):
            raise ValueError("needs exactly one of providerHost, inferencePool")
        return self


class RouteRule(StrictModel):
    """Matches are ORed; a rule without matches takes every request (the default rule)."""

    name: str | None = Field(default=None, min_length=1)
    matches: list[RouteMatch] = Field(default_factory=list)
    backend_refs: list[BackendRef] = Field(alias="backendRefs", min_length=1)
    # epp extras (None: the gateway's defaults: no deadline; 1 retry, 0 without retry_on_fallback).
    timeout: Duration | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    retries: StrictInt | None = Field(default=None, ge=0, le=MAX_RETRIES)


class LLMRouteSpec(PlacedModel):
    host: Host
    rules: list[RouteRule] = Field(min_length=1)


class KubeDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    status: Any = Field(default=None, exclude=True, repr=False)  # as `kubectl get -o yaml` writes it


class LLMProvider(KubeDocument):
    spec: LLMProviderSpec


class LLMRoute(KubeDocument):
    spec: LLMRouteSpec
