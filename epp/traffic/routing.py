"""TrafficRouter: request host + headers -> the provider (or local pool) to send to, and its fallbacks.

A host that has an LLMRoute takes the route: rules are tried in order, the first whose matches pass wins
(a rule without matches takes everything), and one of its backendRefs is drawn by weight. A host that is
only a provider's takes that provider with its defaultConfig. A route host where no rule matches, and an
unknown host, give None (the caller answers 404). Header names must be lower-case (as ASGI gives them).

A route's provider hosts are one outlier-detection service (`Choice.service`, the set its weights split
over, like the hosts of one Envoy cluster); a provider's own host is a service of one. `choose` skips
backends the caller says are ejected and draws among the rule's others by weight.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable, Mapping
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
    siblings: tuple[Target, ...] = ()  # the rule's other provider backends (weight > 0): retry candidates
    service: tuple[str, ...] = ()  # the outlier-detection service: the route's provider hosts, sorted
    timeout_s: float | None = None  # the rule's `timeout` (None: no deadline)
    retries: int | None = None  # the rule's `retries` (None: the gateway's default)

    def service_of(self, host: str) -> tuple[str, ...]:
        """The service `host` is counted in: the route's when it is one of its backends, else its own."""
        return self.service if host in self.service else (host,)


# (service, client port, provider host) -> True while that host is ejected in that service.
EjectedCheck = Callable[[tuple[str, ...], int, str], bool]


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
    weights: tuple[int, ...]
    cumulative: tuple[int, ...]  # running sum of weights, for a bisect draw
    timeout_s: float | None
    retries: int | None

    def matches(self, headers: Mapping[str, str]) -> bool:
        return not self.matchers or any(m(headers) for m in self.matchers)

    def draw(self, rng: random.Random, avoid: Callable[[Target], bool] | None = None) -> Target:
        """A target by weight; one `avoid` refuses is re-drawn among the others (kept if all are)."""
        if len(self.targets) == 1:
            return self.targets[0]
        # Zero-weight refs never win: bisect_right skips over their repeated cumulative value.
        drawn = self.targets[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]
        if avoid is None or drawn.host is None or not avoid(drawn):
            return drawn
        alive = [(t, w) for t, w in zip(self.targets, self.weights, strict=True) if w and not avoid(t)]
        if not alive:
            return drawn  # all out: the caller's fallback logic takes over
        cumulative = list(accumulate(w for _, w in alive))
        return alive[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])][0]

    def siblings(self, drawn: Target) -> tuple[Target, ...]:
        return tuple(
            t
            for t, w in zip(self.targets, self.weights, strict=True)
            if w and t.host is not None and t.host != drawn.host
        )


class TrafficRouter:
    """Chooses a Target per request; `rng` draws weighted backends (inject a seeded one in tests)."""

    def __init__(self, config: TrafficConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._routes: dict[str, tuple[str, tuple[_Rule, ...], tuple[str, ...]]] = {}
        # Targets, fallbacks included, are built once: openai_for merges configs, too slow per request.
        self._fallback_cache: dict[tuple[str, str | None], tuple[Target, ...]] = {}
        for host, route in config.routes.items():
            rules = []
            for rule in route.spec.rules:
                targets = tuple(
                    self._target(ref.provider_host, ref.inference_pool, rule.name)
                    for ref in rule.backend_refs
                )
                weights = tuple(ref.weight for ref in rule.backend_refs)
                matchers = tuple(_Matcher(m) for m in rule.matches)
                cumulative = tuple(accumulate(weights))
                rules.append(
                    _Rule(rule.name, matchers, targets, weights, cumulative, rule.timeout, rule.retries)
                )
            hosts = {ref.provider_host for r in route.spec.rules for ref in r.backend_refs}
            service = tuple(sorted(h for h in hosts if h is not None))
            self._routes[host] = (route.metadata.name, tuple(rules), service)
        for provider_host in config.providers:
            for rule_name in {None, *(r.name for _, rs, _ in self._routes.values() for r in rs)}:
                chain = config.fallback_chain(provider_host)
                targets = tuple(self._target(h, None, rule_name) for h in chain)
                self._fallback_cache[(provider_host, rule_name)] = targets
        self._direct = {h: self._target(h, None, None) for h in config.providers}

    def _target(self, provider_host: str | None, pool: str | None, rule: str | None) -> Target:
        if provider_host is None:
            return Target(None, pool)
        spec = self.config.providers[provider_host].spec
        return Target(spec, None, spec.openai_for(rule))

    def choose(
        self, host: str, headers: Mapping[str, str], ejected: EjectedCheck | None = None
    ) -> Choice | None:
        """The Choice for a request to `host` (a Host or :authority value, port allowed), or None.

        With `ejected`, a weighted rule does not draw a backend that is ejected in the route's service.
        """
        name, port = split_host(host)
        port = port or DEFAULT_CLIENT_PORT
        route = self._routes.get(name)
        if route is not None:
            route_name, rules, service = route
            avoid = None
            if ejected is not None:

                def avoid(t: Target) -> bool:
                    return t.host is not None and ejected(service, port, t.host)

            for rule in rules:
                if rule.matches(headers):
                    drawn = rule.draw(self._rng, avoid)
                    fallbacks = self._fallbacks(drawn, rule.name)
                    siblings = rule.siblings(drawn)
                    return Choice(
                        name,
                        port,
                        route_name,
                        rule.name,
                        drawn,
                        fallbacks,
                        siblings,
                        service,
                        rule.timeout_s,
                        rule.retries,
                    )
            return None
        target = self._direct.get(name)
        if target is not None:
            return Choice(name, port, None, None, target, self._fallbacks(target, None), (), (name,))
        return None

    def _fallbacks(self, target: Target, rule: str | None) -> tuple[Target, ...]:
        if target.host is None:
            return ()
        return self._fallback_cache.get((target.host, rule), ())
