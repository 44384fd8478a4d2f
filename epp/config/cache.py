"""The response cache's configuration: the seed's WasmPlugin + ConfigMap and epp's LLMCache -> CacheSettings.

Where each setting comes from (later wins):
- selection (`host_match`, `path_match`) and fail strategy: the cache WasmPlugin or the LLMCache document
  (setting one in both is an error); without either, everything is selected and the strategy is FAIL_OPEN;
  a WasmPlugin without `failStrategy` is FAIL_CLOSE, as in Istio;
- Redis: 127.0.0.1:6379, no password, 600 s; then the ConfigMap's REDIS_*; then REDIS_* of the process
  environment (in Kubernetes the ConfigMap *is* the container's environment); `epp cache serve` flags last;
- the entries' default TTL: LLMCache `defaultTTL`, else REDIS_EXPIRED_SECONDS;
- backend: `Service` (the HTTP cache service at the WasmPlugin's service:port, or LLMCache `serviceURL`) when
  a WasmPlugin or a serviceURL says so, else `InProcess` (the tiers in the caller's process, on Redis).
The Redis password is a SecretStr: never in an error message, a repr or a summary. The documents are read by
epp.config.cache_build (their models: epp.config.cache_documents).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import SecretStr

Backend = Literal["service", "in-process"]
DEFAULT_REDIS_ADDRESS = "127.0.0.1:6379"
DEFAULT_EXPIRE_S = 600
ANY_PATTERN = ".*"
_ANY = re.compile(ANY_PATTERN)


@dataclass(frozen=True)
class RedisSettings:
    address: str = DEFAULT_REDIS_ADDRESS  # host:port ([v6]:port)
    password: SecretStr = field(default_factory=lambda: SecretStr(""))  # "": no AUTH
    expire_s: int = DEFAULT_EXPIRE_S  # REDIS_EXPIRED_SECONDS

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class SemanticSettings:
    enabled: bool = False
    models: tuple[str, ...] = ("*",)  # fnmatch globs on the request's model
    routes: tuple[str, ...] = ("*",)  # fnmatch globs on the request path
    threshold: float | None = None  # None: the semantic tier's default

    def applies(self, model: str, path: str = "") -> bool:
        """Whether a request for `model` on `path` may use the semantic tier ("" path: any route)."""
        if not self.enabled or not any(fnmatch.fnmatchcase(model, g) for g in self.models):
            return False
        return not path or any(fnmatch.fnmatchcase(path.split("?", 1)[0], g) for g in self.routes)


@dataclass(frozen=True)
class CacheSettings:
    """Everything the cache stage and `epp cache serve` need from the user's documents."""

    host_match: re.Pattern[str] = _ANY  # the whole host, lower-case, without port
    path_match: re.Pattern[str] = _ANY  # the whole path, without query
    fail_open: bool = True  # FAIL_OPEN: an outage is a miss; FAIL_CLOSE: 503
    backend: Backend = "in-process"
    service_url: str | None = None  # the HTTP cache service (backend "service")
    redis: RedisSettings = field(default_factory=RedisSettings)
    default_ttl_s: float = float(DEFAULT_EXPIRE_S)
    lookup_timeout_s: float = 0.05  # the most an outage adds to a request
    memory_bytes: int = 64 * 1024 * 1024  # the in-process LRU in front of Redis (0: none)
    max_entry_bytes: int = 1 << 20  # larger answers are not stored
    cache_sampled: bool = False  # also cache requests that ask for random sampling
    namespace: str = ""  # the namespace of requests whose `cache` object names none
    semantic: SemanticSettings = field(default_factory=SemanticSettings)
    plugin: str | None = None  # metadata.name of the WasmPlugin the settings came from

    def selects(self, host: str, path: str) -> bool:
        """Whether the cache sees a request to `host` (`Host`/`:authority`, port optional) and `path`."""
        return bool(self.host_match.fullmatch(host_without_port(host))) and bool(
            self.path_match.fullmatch(path.split("?", 1)[0])
        )

    def semantic_for(self, model: str, path: str = "") -> bool:
        return self.semantic.applies(model, path)

    def with_redis(self, **changes: Any) -> CacheSettings:
        return dataclasses.replace(self, redis=dataclasses.replace(self.redis, **changes))


def host_without_port(authority: str) -> str:
    """`Host:8080` -> `host`; `[::1]:80` -> `[::1]`; lower-case, without a trailing dot."""
    host = authority.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")


def summary_lines(settings: CacheSettings) -> list[str]:
    """For `epp check-config`: what the cache will do (never the password)."""
    where = settings.service_url if settings.backend == "service" else "in-process"
    semantic = "off"
    if settings.semantic.enabled:
        semantic = (
            f"models {', '.join(settings.semantic.models)}, routes {', '.join(settings.semantic.routes)}"
        )
        if settings.semantic.threshold is not None:
            semantic += f", threshold {settings.semantic.threshold:g}"
    auth = ", password set" if settings.redis.password.get_secret_value() else ""
    return [
        f"cache: host {settings.host_match.pattern!r}, path {settings.path_match.pattern!r}, "
        f"{'FAIL_OPEN' if settings.fail_open else 'FAIL_CLOSE'}, backend {where}",
        f"cache redis: {settings.redis.address}{auth}, ttl {settings.default_ttl_s:g}s, "
        f"lookup timeout {settings.lookup_timeout_s * 1000:g}ms, semantic {semantic}",
    ]
