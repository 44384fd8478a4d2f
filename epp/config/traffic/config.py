"""TrafficConfig: the validated traffic documents, keyed by host, and the error type for bad ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.config.errors import ConfigError, DocumentRef
from epp.config.traffic.documents import LLMProvider, LLMRoute
from epp.config.traffic.istio import DestinationRule, VirtualService
from epp.config.traffic.policy import UpstreamPolicy, upstream_policy

TrafficDocument = LLMProvider | LLMRoute | DestinationRule | VirtualService


class TrafficConfigError(ConfigError):
    """Every traffic-document problem found (a ConfigError, so it reads like the loader's)."""


@dataclass(frozen=True, slots=True)
class Placed:
    """A validated document and where it came from."""

    where: DocumentRef
    doc: TrafficDocument


@dataclass(frozen=True)
class TrafficConfig:
    """Validated traffic documents, keyed by (normalised) host."""

    providers: Mapping[str, LLMProvider] = field(default_factory=dict)
    routes: Mapping[str, LLMRoute] = field(default_factory=dict)
    destination_rules: Mapping[str, DestinationRule] = field(default_factory=dict)
    fallbacks: Mapping[str, str] = field(default_factory=dict)  # destination host -> fallback host

    def upstream(self, host: str, port: int | None = None) -> UpstreamPolicy:
        """Outlier settings and TLS for `host` as addressed on `port` (the client's port)."""
        provider, rule = self.providers.get(host), self.destination_rules.get(host)
        return upstream_policy(provider.spec if provider else None, rule.spec if rule else None, port)

    def fallback_chain(self, host: str) -> tuple[str, ...]:
        """The hosts to try, in order, while `host` is ejected (fallbacks of fallbacks, no repeats)."""
        chain: list[str] = []
        seen = {host}
        nxt = self.fallbacks.get(host)
        while nxt is not None and nxt not in seen:
            chain.append(nxt)
            seen.add(nxt)
            nxt = self.fallbacks.get(nxt)
        return tuple(chain)
