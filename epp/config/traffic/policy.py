"""Per-destination upstream policy: outlier-detection settings and TLS, from LLMProvider + DestinationRule."""

from __future__ import annotations

from dataclasses import dataclass

from epp.config.traffic.documents import LLMProviderSpec
from epp.config.traffic.istio import DestinationRuleSpec, TLSSettings
from epp.health.outlier import OutlierSettings

# The port an ASM client addresses a provider on (plain HTTP; the mesh upgrades it to HTTPS).
DEFAULT_CLIENT_PORT = 80


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How to connect to a provider: TLS on by default, certificates verified unless turned off."""

    enabled: bool = True
    verify: bool = True
    ca_file: str | None = None
    sni: str | None = None  # None: the provider's host

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"

    @property
    def default_port(self) -> int:
        return 443 if self.enabled else 80


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    """What a DestinationRule (and the provider's own `tls`) says about one host and port."""

    outlier: OutlierSettings | None = None  # None: no outlier detection (Istio's default)
    tls: UpstreamTLS = UpstreamTLS()


def upstream_policy(
    provider: LLMProviderSpec | None, rule: DestinationRuleSpec | None, port: int | None
) -> UpstreamPolicy:
    """The provider's tls, overridden by the rule's host-level settings, overridden by its port's."""
    base = provider.tls if provider is not None else None
    tls = UpstreamTLS(
        verify=base.verify if base else True,
        ca_file=base.ca_file if base else None,
        sni=base.sni if base else None,
    )
    if rule is None:
        return UpstreamPolicy(None, tls)
    policy = rule.traffic_policy
    outlier, tls_settings = policy.outlier_detection, policy.tls
    for level in policy.port_level_settings:
        if port is not None and level.port.number == port:
            # istiod's merge: a sub-policy set on the port replaces the host-level one, others are kept.
            outlier = level.outlier_detection or outlier
            tls_settings = level.tls or tls_settings
    return UpstreamPolicy(outlier.to_settings() if outlier else None, _apply(tls, tls_settings))


def _apply(tls: UpstreamTLS, settings: TLSSettings | None) -> UpstreamTLS:
    if settings is None:
        return tls
    if settings.mode == "DISABLE":
        return UpstreamTLS(enabled=False, verify=False)
    verify = tls.verify if settings.insecure_skip_verify is None else not settings.insecure_skip_verify
    return UpstreamTLS(True, verify, settings.ca_certificates or tls.ca_file, settings.sni or tls.sni)
