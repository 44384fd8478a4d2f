"""pydantic models of the Istio `DestinationRule` and `VirtualService` fields epp applies to LLM traffic.

DestinationRule: `spec.host`, `trafficPolicy.{outlierDetection,tls}` and the same per port under
`trafficPolicy.portLevelSettings[]`. A port's settings replace the host-level ones field by field (a port
with only `tls` keeps the host-level `outlierDetection`), as istiod merges them. Outlier detection is
epp's `OutlierDetectionSpec` (Istio's names and defaults).
VirtualService: read for `http[].route[].fallback.target.host` only (an ASM extension): where a
destination's traffic goes while the destination is ejected.

Istio fields that do not change what epp does (`exportTo`, `workloadSelector`, `connectionPool`,
`loadBalancer`, `subsets`, ...) are accepted and ignored; Istio fields whose meaning epp does not
implement (`http[].match`, `redirect`, mutual TLS, ...) are errors saying so, rather than being ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, model_validator

from epp.config.traffic.documents import Host, KubeDocument, StrictModel
from epp.health.outlier_settings import OutlierDetectionSpec

ISTIO_GROUP = "networking.istio.io"
ISTIO_API_VERSIONS = tuple(f"{ISTIO_GROUP}/{v}" for v in ("v1", "v1beta1", "v1alpha3"))


def _drop(data: Any, ignored: tuple[str, ...], unsupported: tuple[str, ...] = (), why: str = "") -> Any:
    """Remove ignored Istio fields; fail on ones epp would silently get wrong."""
    if not isinstance(data, dict):
        return data
    for name in unsupported:
        if name in data:
            raise ValueError(f"{name} is not supported by epp ({why})")
    return {k: v for k, v in data.items() if k not in ignored}


class TLSSettings(StrictModel):
    """Istio `ClientTLSSettings`: DISABLE (plain HTTP) or SIMPLE (TLS to the provider)."""

    mode: Literal["DISABLE", "SIMPLE"] = "SIMPLE"
    sni: str | None = Field(default=None, min_length=1)
    ca_certificates: str | None = Field(default=None, alias="caCertificates", min_length=1)
    insecure_skip_verify: StrictBool | None = Field(default=None, alias="insecureSkipVerify")

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mode") in ("MUTUAL", "ISTIO_MUTUAL"):
            raise ValueError(f"tls mode {data['mode']} is not supported by epp (use DISABLE or SIMPLE)")
        return _drop(
            data,
            ignored=("subjectAltNames", "credentialName"),
            unsupported=("clientCertificate", "privateKey"),
            why="client certificates are mutual TLS",
        )


class _Policy(StrictModel):
    outlier_detection: OutlierDetectionSpec | None = Field(default=None, alias="outlierDetection")
    tls: TLSSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: Any) -> Any:
        return _drop(
            data,
            ignored=("connectionPool", "loadBalancer", "tunnel", "proxyProtocol", "retryBudget"),
        )


class PortSelector(StrictModel):
    number: StrictInt = Field(ge=1, le=65535)


class PortPolicy(_Policy):
    port: PortSelector


class TrafficPolicy(_Policy):
    port_level_settings: list[PortPolicy] = Field(default_factory=list, alias="portLevelSettings")

    @model_validator(mode="after")
    def _ports_unique(self) -> TrafficPolicy:
        ports = [p.port.number for p in self.port_level_settings]
        dup = sorted({p for p in ports if ports.count(p) > 1})
        if dup:
            raise ValueError(f"port {dup[0]} appears more than once in portLevelSettings")
        return self


class DestinationRuleSpec(StrictModel):
    host: Host
    traffic_policy: TrafficPolicy = Field(default_factory=TrafficPolicy, alias="trafficPolicy")

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: Any) -> Any:
        return _drop(data, ignored=("exportTo", "workloadSelector", "subsets"))


class Destination(StrictModel):
    host: Host
    port: PortSelector | None = None
    subset: str | None = None


class Fallback(StrictModel):
    target: Destination


class RouteDestination(StrictModel):
    destination: Destination
    weight: StrictInt | None = None
    fallback: Fallback | None = None

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: Any) -> Any:
        return _drop(data, ignored=("headers",))


class HTTPRoute(StrictModel):
    name: str | None = None
    route: list[RouteDestination] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: Any) -> Any:
        return _drop(
            data,
            ignored=("timeout", "retries", "headers", "corsPolicy"),
            unsupported=(
                "match",
                "redirect",
                "directResponse",
                "delegate",
                "rewrite",
                "fault",
                "mirror",
                "mirrors",
                "mirrorPercentage",
            ),
            why="epp reads VirtualServices only for provider fallback",
        )


class VirtualServiceSpec(StrictModel):
    hosts: list[Host] = Field(min_length=1)
    http: list[HTTPRoute] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: Any) -> Any:
        return _drop(
            data,
            ignored=("gateways", "exportTo"),
            unsupported=("tls", "tcp"),
            why="epp reads VirtualServices only for HTTP provider fallback",
        )


class DestinationRule(KubeDocument):
    spec: DestinationRuleSpec


class VirtualService(KubeDocument):
    spec: VirtualServiceSpec
