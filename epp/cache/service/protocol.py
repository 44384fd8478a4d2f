"""epp's cache-service protocol: two JSON calls over HTTP/1.1, and their (de)serialisation.

A cache stage (epp gateway, the Envoy ext_proc path) that is configured with a cache service asks it before
forwarding a request and tells it the answer afterwards. `epp cache serve` implements the protocol; a user
who replaces the service implements these two calls (and may ignore everything else here).

    POST /v1/cache/lookup            Content-Type: application/json
    {"query": <query>, "request": <the request body as the client sent it (a JSON object), or null>}
    -> 200 {"hit": {"tier": "exact" | "semantic", "entry_id": str, "similarity": float | null,
                    "answer": <answer>}}
    -> 200 {"hit": null}                                        (a miss, or query.lookup was false)

    POST /v1/cache/store             Content-Type: application/json
    {"query": <query>, "request": <as above>, "answer": <answer>}
    -> 200 {"stored": true, "entry_id": str}
    -> 200 {"stored": false, "entry_id": null, "reason": str}   (query.store false, or an answer that must
                                                                 not be replayed: an error, a `length` finish)

    <query>  = {"kind": "chat" | "completion",   /v1/chat/completions or /v1/completions
                "tenant": str,                   hex digest of the client's credential, or "anonymous"
                "namespace": str,                the body's `cache.namespace` ("" by default)
                "model": str,
                "key": str,                      exact key: 64 lower-case hex digits (epp.cache.key)
                "partition": str,                semantic partition ("" when the request has none)
                "text": str,                     what the semantic tier embeds (the last user message)
                "lookup": bool = true, "store": bool = true,
                "semantic": bool = false,        the semantic tier may answer this request
                "ttl_s": float | null,           the request's own TTL (null: the service's default)
                "max_age_s": float | null}       only entries stored at most this many seconds ago
    <answer> = {"body": <the completion JSON object, usage included>, "model": str (kept as query.model),
                "created_at": float (unix seconds), "upstream_s": float (how long the model took),
                "text": str (the query's text)}

Errors are JSON `{"error": {"message": str, "type": str, "code": str}}`: 400 for a body that is not JSON or
misses a field (the message names the field), 413 for a body over 8 MiB, 503 when the cache itself cannot
answer (Redis down or too slow). To the stage any reply but a 200 with this shape, or no reply within its
timeout, is an outage: it applies its fail strategy (FAIL_OPEN: a miss). The "request" is there so a
replacement service can compute its own key (null when the caller does not pass it); epp's service uses
query.key and ignores it. Unknown fields are ignored, so later versions may add some. The tenant is trusted:
the service belongs on a private network (the admin API, not these calls, takes a token).
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from epp.cache.types import CacheHit, CacheQuery, StoredAnswer

LOOKUP_PATH = "/v1/cache/lookup"
STORE_PATH = "/v1/cache/store"
MAX_BODY_BYTES = 8 * 1024 * 1024
KEY_RE = re.compile(r"[0-9a-f]{64}")
_STRINGS = ("tenant", "namespace", "model", "key", "partition", "text")
_FLAGS = {"lookup": True, "store": True, "semantic": False}


class ProtocolError(ValueError):
    """A request or answer that does not follow the protocol; the message names the field."""


def query_json(query: CacheQuery) -> dict[str, Any]:
    return {
        "kind": query.kind,
        "tenant": query.tenant,
        "namespace": query.namespace,
        "model": query.model,
        "key": query.key,
        "partition": query.partition,
        "text": query.text,
        "lookup": query.lookup,
        "store": query.store,
        "semantic": query.semantic,
        "ttl_s": query.ttl_s,
        "max_age_s": query.max_age_s,
    }


def answer_json(answer: StoredAnswer) -> dict[str, Any]:
    return {
        "body": orjson.Fragment(answer.body),  # already JSON: embedded as is, not parsed and re-encoded
        "model": answer.model,
        "created_at": answer.created_at,
        "upstream_s": answer.upstream_s,
        "text": answer.text,
    }


def hit_json(hit: CacheHit | None) -> dict[str, Any]:
    if hit is None:
        return {"hit": None}
    return {
        "hit": {
            "tier": hit.tier,
            "entry_id": hit.entry_id,
            "similarity": hit.similarity,
            "answer": answer_json(hit.answer),
        }
    }


def parse_query(data: Any, where: str = "query") -> CacheQuery:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: must be an object")
    kind = data.get("kind")
    if kind not in ("chat", "completion"):
        raise ProtocolError(f'{where}.kind: must be "chat" or "completion"')
    values: dict[str, Any] = {}
    for name in _STRINGS:
        value = data.get(name, "" if name in ("namespace", "partition", "text") else None)
        if value is None:
            raise ProtocolError(f"{where}.{name}: required")
        if not isinstance(value, str):
            raise ProtocolError(f"{where}.{name}: must be a string")
        values[name] = value
    if not values["tenant"] or not values["model"]:
        raise ProtocolError(f"{where}.{'tenant' if not values['tenant'] else 'model'}: must not be empty")
    if not KEY_RE.fullmatch(values["key"]):
        raise ProtocolError(f"{where}.key: must be 64 lower-case hex digits")
    for name, default in _FLAGS.items():
        flag = data.get(name, default)
        if not isinstance(flag, bool):
            raise ProtocolError(f"{where}.{name}: must be a boolean")
        values[name] = flag
    for name in ("ttl_s", "max_age_s"):
        values[name] = _seconds(data.get(name), f"{where}.{name}", allow_zero=name == "max_age_s")
    return CacheQuery(kind=kind, **values)


def parse_answer(data: Any, where: str = "answer") -> StoredAnswer:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: must be an object")
    body = data.get("body")
    if not isinstance(body, dict):
        raise ProtocolError(f"{where}.body: must be the completion JSON object")
    model, text = data.get("model"), data.get("text", "")
    if not isinstance(model, str) or not model:
        raise ProtocolError(f"{where}.model: must be a non-empty string")
    if not isinstance(text, str):
        raise ProtocolError(f"{where}.text: must be a string")
    created = _number(data.get("created_at"), f"{where}.created_at")
    upstream = _number(data.get("upstream_s", 0.0), f"{where}.upstream_s")
    return StoredAnswer(orjson.dumps(body), model, created, upstream, text)


def parse_hit(data: Any) -> CacheHit | None:
    """The `hit` of a lookup reply (the client's side); ProtocolError when it is malformed."""
    if not isinstance(data, dict) or "hit" not in data:
        raise ProtocolError("reply: must be an object with `hit`")
    hit = data["hit"]
    if hit is None:
        return None
    if not isinstance(hit, dict) or hit.get("tier") not in ("exact", "semantic"):
        raise ProtocolError('hit.tier: must be "exact" or "semantic"')
    entry_id, similarity = hit.get("entry_id"), hit.get("similarity")
    if not isinstance(entry_id, str):
        raise ProtocolError("hit.entry_id: must be a string")
    if similarity is not None:
        similarity = _number(similarity, "hit.similarity")
    return CacheHit(parse_answer(hit.get("answer"), "hit.answer"), hit["tier"], entry_id, similarity)


def error_json(message: str, type_: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code}})


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"{where}: must be a finite number")
    return float(value)


def _seconds(value: Any, where: str, allow_zero: bool) -> float | None:
    if value is None:
        return None
    seconds = _number(value, where)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ProtocolError(f"{where}: must be {'>= 0' if allow_zero else '> 0'} or null")
    return seconds
