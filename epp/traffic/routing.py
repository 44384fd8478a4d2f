"""TrafficRouter: request host + headers -> the provider (or local pool) to send to, and its fallbacks.

A host that has an LLMRoute takes the route: rules are tried in order, the first whose matches pass wins
(a rule without matches takes everything), and one of its backendRefs is drawn by weight. A host that is
only a provider's takes that provider with its defaultConfig. A route host where no rule matches, and an
unknown host, give None (the caller answers 404). Header names must be lower-case (as ASGI gives them).
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from urllib.parse import urlencode

from epp.config.traffic.config import TrafficConfig
from epp.config.traffic.documents import (
    LLMProviderSpec,
    OpenAIConfig,
    RouteMatch,
    StringMatch,
    normalise_host,
)
from epp.config.traffic.policy import DEFAULT_CLIENT_PORT
from epp.traffic.body import BodyError, RewrittenBody, rewrite_body

__all__ = ["BodyError", "Choice", "RewrittenBody", "Target", "TrafficRouter", "rewrite_body", "split_host"]

_EMPTY = OpenAIConfig()


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request: a provider with its effective openAIConfig, or a local pool."""

    provider: LLMProviderSpec | None
    pool: str | None = None
    openai: OpenAIConfig = _EMPTY  # routeSpecificConfigs[rule] over defaultConfig; empty for a pool

    @property
    def host(self) -> str | None:
        return self.provider.host if self.provider else None

    def path_and_query(self) -> str:
        """The upstream request target: the provider's path plus its queryParams."""
        assert self.provider is not None, "a pool target has no provider path"
        query = urlencode(self.provider.query_params)
        return f"{self.provider.path}?{query}" if query else self.provider.path

    def upstream_headers(self, client_authorization: str | None) -> dict[str, str]:
        """Headers to set upstream: the provider's extra headers and Authorization.

        The caller removes the client's `authorization` (and `api-key`) first; it comes back only when
        passClientCredentials is on (preferred over apiKey, which then fills in for clients without one).
        """
        if self.provider is None:
            return {}
        headers = dict(self.provider.headers)
        key = self.openai.api_key
        if self.provider.pass_client_credentials and client_authorization:
            headers["authorization"] = client_authorization
        elif key is not None:
            headers["authorization"] = f"Bearer {key.get_secret_value()}"
        return headers

    def rewrite(self, body: bytes) -> RewrittenBody:
        """`rewrite_body` with this target's config (a pool target gets the empty config)."""
        keep = self.provider.keep_client_model if self.provider else False
        return rewrite_body(body, self.openai, keep_client_model=keep)


@dataclass(frozen=True, slots=True)
class Choice:
    host: str  # the request's host, lower-case, port stripped
    port: int  # the port the client addressed (80 when none): selects DestinationRule port settings
    route: str | None  # the LLMRoute's metadata.name; None when the host is a provider's own
    rule: str | None  # the matched rule's name (None for an unnamed rule)
    target: Target
    fallbacks: tuple[Target, ...]  # from VirtualService fallback, in order, for while target is ejected


def split_host(authority: str) -> tuple[str, int | None]:
    """`Host`/`:authority` -> (normalised host, port or None); IPv6 literals keep their brackets off."""
    text = authority.strip()
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[1:end], text[end + 1 :]) if end > 0 else (text, "")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else None
    return normalise_host(host), port


class _Matcher:
    __slots__ = ("_checks",)

    def __init__(self, match: RouteMatch) -> None:
        self._checks = [(name, _compile(m)) for name, m in match.headers.items()]

    def __call__(self, headers: Mapping[str, str]) -> bool:
        for name, check in self._checks:
            value = headers.get(name)
            if value is None or not check.fullmatch(value):
                return False
        return True


def _compile(m: StringMatch) -> re.Pattern[str] | _Prefix | _Exact:
    if m.regex is not None:
        return re.compile(m.regex)
    if m.prefix is not None:
        return _Prefix(m.prefix)
    assert m.exact is not None
    return _Exact(m.exact)


class _Exact:
    __slots__ = ("v",)

    def __init__(self, v: str) -> None:
        self.v = v

    def fullmatch(self, value: str) -> bool:
        return value == self.v


class _Prefix:
    __slots__ = ("v",)

    def __init__(self, v: str) -> None:
        self.v = v

    def fullmatch(self, value: str) -> bool:
        return value.startswith(self.v)


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str | None
    matchers: tuple[_Matcher, ...]
    targets: tuple[Target, ...]
    cumulative: tuple[int, ...]  # running sum of weights, for a bisect draw

    def matches(self, headers: Mapping[str, str]) -> bool:
        return not self.matchers or any(m(headers) for m in self.matchers)

    def draw(self, rng: random.Random) -> Target:
        if len(self.targets) == 1:
            return self.targets[0]
        # Zero-weight refs never win: bisect_right skips over their repeated cumulative value.
        return self.targets[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]


class TrafficRouter:
    """Chooses a Target per request; `rng` draws weighted backends (inject a seeded one in tests)."""

    def __init__(self, config: TrafficConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._routes: dict[str, tuple[str, tuple[_Rule, ...]]] = {}
        # Targets, fallbacks included, are built once: openai_for merges configs, too slow per request.
        self._fallback_cache: dict[tuple[str, str | None], tuple[Target, ...]] = {}
        for host, route in config.routes.items():
            rules = []
            for rule in route.spec.rules:
                targets = tuple(
                    self._target(ref.provider_host, ref.inference_pool, rule.name)
                    for ref in rule.backend_refs
                )
                cumulative = tuple(accumulate(ref.weight for ref in rule.backend_refs))
                rules.append(_Rule(rule.name, tuple(_Matcher(m) for m in rule.matches), targets, cumulative))
            self._routes[host] = (route.metadata.name, tuple(rules))
        for provider_host in config.providers:
            for rule_name in {None, *(r.name for _, rs in self._routes.values() for r in rs)}:
                chain = config.fallback_chain(provider_host)
                targets = tuple(self._target(h, None, rule_name) for h in chain)
                self._fallback_cache[(provider_host, rule_name)] = targets
        self._direct = {h: self._target(h, None, None) for h in config.providers}

    def _target(self, provider_host: str | None, pool: str | None, rule: str | None) -> Target:
        if provider_host is None:
            return Target(None, pool)
        spec = self.config.providers[provider_host].spec
        return Target(spec, None, spec.openai_for(rule))

    def choose(self, host: str, headers: Mapping[str, str]) -> Choice | None:
        """The Choice for a request to `host` (a Host or :authority value, port allowed), or None."""
        name, port = split_host(host)
        port = port or DEFAULT_CLIENT_PORT
        route = self._routes.get(name)
        if route is not None:
            route_name, rules = route
            for rule in rules:
                if rule.matches(headers):
                    drawn = rule.draw(self._rng)
                    return Choice(name, port, route_name, rule.name, drawn, self._fallbacks(drawn, rule.name))
            return None
        target = self._direct.get(name)
        if target is not None:
            return Choice(name, port, None, None, target, self._fallbacks(target, None))
        return None

    def _fallbacks(self, target: Target, rule: str | None) -> tuple[Target, ...]:
        if target.host is None:
            return ()
        return self._fallback_cache.get((target.host, rule), ())
