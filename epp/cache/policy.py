"""Which requests the cache may answer or keep: a request becomes a CacheQuery or a Bypass with a reason.

Never cached: `n` or `best_of` above 1 (the cache keeps one choice), and, unless `CachePolicy.cache_sampled`,
sampled requests. "Sampled" means the request itself asks for randomness: `temperature` > 0, or `top_p` < 1
with no `temperature`, and no `seed`. A request that leaves sampling to the server's default is cacheable:
that is what users of the mesh's cache plugin expect (it caches every identical request), and a client that
wants variety says so with a temperature. `temperature: 0` is greedy whatever `top_p` says.

The client steers the cache with `Cache-Control` (`no-store`: bypass; `no-cache`: do not look up but store the
fresh answer; `max-age=N`: only entries at most N s old) and with a body object `cache`
(`{"no_cache": bool, "no_store": bool, "ttl": seconds, "namespace": str}`), which `strip_cache_field` removes
before the body goes upstream.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from epp.cache.key import exact_key, semantic_parts, tenant_of
from epp.cache.types import CacheQuery, RequestKind
from epp.request import CHAT_PATH, COMPLETIONS_PATH, RequestError

KINDS: dict[str, RequestKind] = {CHAT_PATH: "chat", COMPLETIONS_PATH: "completion"}
MAX_TTL_S = 366 * 86400.0
MAX_NAMESPACE_CHARS = 256
_CACHE_FIELDS = frozenset({"no_cache", "no_store", "ttl", "namespace"})


@dataclass(frozen=True)
class CachePolicy:
    default_ttl_s: float = 600.0
    cache_sampled: bool = False  # also cache requests that ask for random sampling
    # The models whose requests may use the semantic tier: a predicate, or fnmatch globs (empty: none).
    semantic_models: Callable[[str], bool] | tuple[str, ...] = ()
    max_entry_bytes: int = 1 << 20  # answers larger than this are not stored
    namespace: str = ""  # the namespace of requests whose `cache` object names none

    def semantic_for(self, model: str) -> bool:
        chosen = self.semantic_models
        if callable(chosen):
            return chosen(model)
        return any(fnmatch.fnmatchcase(model, glob) for glob in chosen)


@dataclass(frozen=True)
class Bypass:
    """The cache stays out of this request; `reason` is short and machine-readable (a metric label)."""

    reason: str  # "no-store", "n>1", "sampled", "not-json", "unsupported-path", "no-model", ...


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    lookup: bool = True
    store: bool = True
    ttl_s: float | None = None
    max_age_s: float | None = None
    namespace: str | None = None


def decide(
    path: str, headers: Mapping[str, str], body: Mapping[str, Any], policy: CachePolicy
) -> CacheQuery | Bypass:
    """The CacheQuery of a request, or why the cache stays out; raises RequestError for a bad `cache` object.

    `headers` have lower-case names; `body` is the parsed JSON request.
    """
    kind = KINDS.get(path.split("?", 1)[0])
    if kind is None:
        return Bypass("unsupported-path")
    if not isinstance(body, Mapping):
        return Bypass("not-json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Bypass("no-model")
    directives = _merge(cache_control(headers.get("cache-control", "")), body_directives(body))
    if not directives.store:
        return Bypass("no-store")
    if not _single_choice(body):
        return Bypass("n>1")
    if not policy.cache_sampled and is_sampled(body):
        return Bypass("sampled")
    tenant = tenant_of(headers)
    namespace = directives.namespace if directives.namespace is not None else policy.namespace
    parts = semantic_parts(kind, tenant, namespace, body)
    partition, text = parts if parts is not None else ("", "")
    return CacheQuery(
        kind=kind,
        tenant=tenant,
        namespace=namespace,
        model=model,
        key=exact_key(kind, tenant, namespace, body),
        partition=partition,
        text=text,
        lookup=directives.lookup,
        store=True,
        semantic=parts is not None and policy.semantic_for(model),
        ttl_s=directives.ttl_s,
        max_age_s=directives.max_age_s,
    )


def cache_control(value: str) -> CacheDirectives:
    """The request directives of a `Cache-Control` header; unknown or malformed ones ignored (RFC 9111)."""
    lookup, store, max_age = True, True, None
    for raw in value.split(","):
        name, _, arg = raw.strip().partition("=")
        name = name.strip().lower()
        if name == "no-store":
            store = False
        elif name == "no-cache":
            lookup = False
        elif name == "max-age":
            arg = arg.strip().strip('"')
            if arg.isdigit():
                max_age = float(arg)
    return CacheDirectives(lookup=lookup, store=store, max_age_s=max_age)


def body_directives(body: Mapping[str, Any]) -> CacheDirectives:
    """The body's `cache` object (absent or null: none); a malformed one is a RequestError (400)."""
    obj = body.get("cache")
    if obj is None:
        return CacheDirectives()
    if not isinstance(obj, dict):
        raise _bad("`cache` must be an object.")
    unknown = sorted(set(obj) - _CACHE_FIELDS)
    if unknown:
        raise _bad(
            f"`cache` has unknown field(s) {', '.join(unknown)}; allowed: no_cache, no_store, ttl, namespace."
        )
    for flag in ("no_cache", "no_store"):
        if obj.get(flag) is not None and not isinstance(obj[flag], bool):
            raise _bad(f"`cache.{flag}` must be a boolean.")
    ttl = obj.get("ttl")
    if ttl is not None:
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not math.isfinite(ttl):
            raise _bad("`cache.ttl` must be a number of seconds.")
        if not 0 < ttl <= MAX_TTL_S:
            raise _bad(f"`cache.ttl` must be above 0 and at most {MAX_TTL_S:.0f} seconds.")
    namespace = obj.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or len(namespace) > MAX_NAMESPACE_CHARS):
        raise _bad(f"`cache.namespace` must be a string of at most {MAX_NAMESPACE_CHARS} characters.")
    return CacheDirectives(
        lookup=not obj.get("no_cache", False),
        store=not obj.get("no_store", False),
        ttl_s=float(ttl) if ttl is not None else None,
        namespace=namespace,
    )


def is_sampled(body: Mapping[str, Any]) -> bool:
    """The request asks for random sampling without a seed (see the module docstring)."""
    if body.get("seed") is not None:
        return False
    temperature = body.get("temperature")
    if temperature is not None:
        return not _is_number(temperature) or temperature > 0
    top_p = body.get("top_p")
    return top_p is not None and (not _is_number(top_p) or top_p < 1)


def include_usage(body: Mapping[str, Any]) -> bool:
    """A streaming request's `stream_options.include_usage` (a replay sends the usage chunk only then)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def strip_cache_field(body: bytes) -> bytes | None:
    """`body` without its top-level `cache` object, or None when it has none (or is not a JSON object)."""
    if b'"cache"' not in body:  # the common case costs a substring search, not a parse
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return without_cache_field(data) if isinstance(data, dict) else None


def without_cache_field(body: Mapping[str, Any]) -> bytes | None:
    """The already parsed `body` re-serialised without its `cache` object, or None when it has none."""
    if "cache" not in body:
        return None
    return orjson.dumps({k: v for k, v in body.items() if k != "cache"})


def _single_choice(body: Mapping[str, Any]) -> bool:
    # Anything but an absent/null or 1 (an invalid value too) stays out: the model server judges it.
    return all(
        body.get(name) is None or (_is_number(body[name]) and body[name] == 1) for name in ("n", "best_of")
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _merge(header: CacheDirectives, body: CacheDirectives) -> CacheDirectives:
    return CacheDirectives(
        lookup=header.lookup and body.lookup,
        store=header.store and body.store,
        ttl_s=body.ttl_s,
        max_age_s=header.max_age_s,
        namespace=body.namespace,
    )


def _bad(message: str) -> RequestError:
    return RequestError(400, message, param="cache", code="invalid_cache")
