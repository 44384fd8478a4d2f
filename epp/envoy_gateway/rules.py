"""An LLMRoute's per-rule settings (epp's `timeout` and `retries` extras) as the Envoy plane renders them.

epp's ext_proc tells Envoy the chosen provider (`x-epp-provider`) and the matched rule's name
(`x-epp-rule`, removed for an unnamed rule), so a route host's requests can be told apart by (provider,
rule name) only. Names are unique within a route, but when several unnamed rules of one route share a
provider, the first of them in the route's order decides for all: if it sets neither field, that pair
keeps the provider's default route.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.config.traffic.documents import LLMRoute


@dataclass(frozen=True)
class RuleSettings:
    provider: str  # the provider host of one of the rule's backendRefs
    rule: str | None  # the rule's name (None: unnamed)
    timeout_s: float | None
    retries: int | None

    @property
    def label(self) -> str:
        return self.rule if self.rule is not None else "(unnamed)"


def rule_settings(route: LLMRoute) -> list[RuleSettings]:
    """The (provider, rule) pairs of `route` that need their own Envoy route, in the route's rule order."""
    seen: set[tuple[str, str | None]] = set()
    settings = []
    for rule in route.spec.rules:
        for ref in rule.backend_refs:
            if ref.provider_host is None:
                continue  # an InferencePool share: the picker's timeouts and retries apply
            key = (ref.provider_host, rule.name)
            if key in seen:
                continue
            seen.add(key)
            if rule.timeout is not None or rule.retries is not None:
                settings.append(RuleSettings(ref.provider_host, rule.name, rule.timeout, rule.retries))
    return settings
