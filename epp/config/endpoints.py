"""Static endpoints for a local run: `--endpoints a:1,name=b:2` or a StaticEndpoints document."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict, Field, field_validator

from epp.config.errors import ConfigError, ConfigIssue, DocumentRef, show_value
from epp.config.gie import ObjectMeta
from epp.datastore import Endpoint

STATIC_ENDPOINTS_API_VERSIONS = ("epp.dev/v1alpha1",)


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6addr]:port` -> (host, port); ValueError with the reason otherwise."""
    text = text.strip()
    if "://" in text or "/" in text:
        raise ValueError("expected host:port without scheme or path")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError("expected [ipv6]:port")
    elif ":" in host:
        raise ValueError("IPv6 addresses need brackets, e.g. [::1]:8000")
    if any(c.isspace() for c in host):
        raise ValueError("host must not contain spaces")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError("port must be a number in 1..65535")
    return host, int(port_text)


def make_endpoint(address: str, name: str | None = None) -> Endpoint:
    """An Endpoint for `host:port`; its name defaults to the address."""
    host, port = parse_address(address)
    return Endpoint(name=name or f"{host}:{port}", host=host, port=port)


def parse_endpoints(text: str, source: str = "--endpoints") -> list[Endpoint]:
    """`127.0.0.1:8100,127.0.0.1:8101` or `a=host:port,...`; empty items are skipped.

    Raises ConfigError naming every bad item, and repeated names."""
    endpoints: list[Endpoint] = []
    issues: list[ConfigIssue] = []
    for index, item in enumerate(text.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        name, sep, address = item.partition("=")
        if not sep:
            name, address = "", item
        where = f"item {index} {show_value(item)}"
        if sep and not name.strip():
            issues.append(ConfigIssue(DocumentRef(source), "empty name before '='", where))
            continue
        try:
            endpoints.append(make_endpoint(address, name.strip() or None))
        except ValueError as exc:
            issues.append(ConfigIssue(DocumentRef(source), str(exc), where))
    issues += [ConfigIssue(DocumentRef(source), reason) for reason in _duplicate_name_reasons(endpoints)]
    if issues:
        raise ConfigError(issues)
    return endpoints


def _duplicate_name_reasons(endpoints: list[Endpoint]) -> list[str]:
    counts = Counter(e.name for e in endpoints)
    return [
        f"endpoint name {show_value(n)} is used twice" for n in sorted(n for n, c in counts.items() if c > 1)
    ]


class StaticEndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1)
    address: str

    @field_validator("address")
    @classmethod
    def _host_port(cls, address: str) -> str:
        host, port = parse_address(address)
        return f"{host}:{port}"

    def to_endpoint(self) -> Endpoint:
        return make_endpoint(self.address, self.name)


class StaticEndpointsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pool_ref: str | None = Field(default=None, min_length=1, alias="poolRef")
    endpoints: list[StaticEndpointSpec]


class StaticEndpoints(BaseModel):
    """epp's own kind (`epp.dev/v1alpha1`): a fixed list of model-server pods for a pool."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: str = Field(alias="apiVersion")
    kind: str = "StaticEndpoints"
    metadata: ObjectMeta
    spec: StaticEndpointsSpec

    def to_endpoints(self) -> list[Endpoint]:
        return [e.to_endpoint() for e in self.spec.endpoints]
