"""The cache's keys: the exact key, the semantic partition + text, the tenant digest.

Exact key (`exact_key`): hex sha256 of canonical JSON (orjson, sorted keys) of
`{"v": KEY_VERSION, "kind", "tenant", "namespace", "model", "body": <answer-changing fields>}` where
- every top-level body field counts except IGNORED_FIELDS (they change how the answer is delivered or
  billed, not what it says) and fields whose value is null (OpenAI reads null as "the default");
- numbers are normalised (1.0 == 1; booleans stay booleans), key order never matters;
- `messages` keep role, content, name, tool_calls, tool_call_id (and any other field, normalised), nulls
  dropped, an empty `tool_calls` list equal to none; `content` that holds only text parts equals the parts'
  texts joined with "\\n" (how vLLM renders them), so `[{"type":"text","text":"hi"}]` == `"hi"`;
- text is kept exactly (no case folding, no whitespace changes): the exact tier answers only what the model
  would have seen byte for byte.

Semantic parts (`semantic_parts`): the partition is a digest of the same fields minus the last user turn's
text, with the earlier messages' text whitespace-collapsed (case kept), so a hit needs the same model,
parameters, system prompt and conversation so far; the text is what the tier embeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from epp.cache.types import RequestKind

KEY_VERSION = 1
ANONYMOUS = "anonymous"
# Request fields that never change the answer's content. `cache` is epp's own (stripped before upstream).
IGNORED_FIELDS = frozenset(
    {
        "stream",  # delivery only: a streamed and a JSON answer are the same answer
        "stream_options",  # include_usage: the replay adds the usage chunk on demand
        "user",  # end-user id for abuse tracking
        "safety_identifier",  # the same, newer name
        "metadata",  # tags for the client's own bookkeeping
        "store",  # OpenAI's stored completions (distillation/evals)
        "cache",  # epp's cache directives
        "service_tier",  # latency/billing tier, same model
        "prompt_cache_key",  # OpenAI's prompt-cache routing hint
        "prompt_cache_retention",
        "request_id",  # vLLM's client-chosen request id
        "priority",  # vLLM's scheduling priority
    }
)
# Credential headers in order of precedence; the whole value counts (scheme included).
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
_TENANT_DOMAIN = b"epp-cache-tenant\0"
_PARTITION_DOMAIN = b"epp-cache-partition\0"
_MODEL_DOMAIN = b"epp-cache-model\0"
_MAX_INT = 2**63


def tenant_of(headers: Mapping[str, str]) -> str:
    """Hex digest of the client's credential (lower-case header names), or "anonymous" without one."""
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name)
        if value:
            return hashlib.sha256(_TENANT_DOMAIN + value.encode("utf-8", "surrogatepass")).hexdigest()
    return ANONYMOUS


def model_digest(model: str) -> str:
    """A short digest of `model` that prefixes its Redis keys, so one model's entries can be found."""
    return hashlib.sha256(_MODEL_DOMAIN + model.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def exact_key(kind: RequestKind, tenant: str, namespace: str, body: Mapping[str, Any]) -> str:
    """The exact tier's key of a request (see the module docstring for what counts)."""
    canonical = _envelope(kind, tenant, namespace, body)
    canonical["body"] = answer_fields(body)
    return hashlib.sha256(_dumps(canonical)).hexdigest()


def semantic_parts(
    kind: RequestKind, tenant: str, namespace: str, body: Mapping[str, Any]
) -> tuple[str, str] | None:
    """(partition, text) for the semantic tier, or None when the request has no single text turn to embed.

    Chat: the text is the last message's, which must be a user message with text content only. Completion:
    the prompt, which must be one string. Empty text (after stripping) is None too.
    """
    fields = answer_fields(body)
    if kind == "chat":
        messages = fields.pop("messages", None)
        if not isinstance(messages, list) or not messages:
            return None
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        text = last.get("content")
        if not isinstance(text, str):
            return None
        rest = {k: v for k, v in last.items() if k not in ("role", "content")}  # e.g. `name`
        context: Any = {"history": [_collapse_message(m) for m in messages[:-1]], "last": rest}
    else:
        text = fields.pop("prompt", None)
        if not isinstance(text, str):
            return None
        context = None
    text = text.strip()
    if not text:
        return None
    canonical = _envelope(kind, tenant, namespace, body)
    canonical["body"] = fields
    canonical["context"] = context
    partition = hashlib.sha256(_PARTITION_DOMAIN + _dumps(canonical)).hexdigest()
    return partition, text


def answer_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body's answer-changing fields, normalised (messages included, `model` too)."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in IGNORED_FIELDS or value is None:
            continue
        if name == "messages" and isinstance(value, list):
            out[name] = [normalise_message(m) for m in value]
        else:
            out[name] = normalise(value)
    return out


def normalise_message(message: Any) -> Any:
    """One chat message in canonical form (a non-object is kept as is: the model server rejects it)."""
    if not isinstance(message, dict):
        return normalise(message)
    out: dict[str, Any] = {}
    for name, value in message.items():
        if value is None:
            continue
        if name == "content":
            out[name] = _content(value)
        elif name == "tool_calls" and isinstance(value, list) and not value:
            continue
        else:
            out[name] = normalise(value)
    return out


def normalise(value: Any) -> Any:
    """JSON with integral floats as ints (1.0 == 1); booleans, strings and structure kept."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < _MAX_INT else value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _MAX_INT:
        return float(value)  # orjson writes 64-bit ints only; such a number is a float on the wire anyway
    if isinstance(value, dict):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


def _content(content: Any) -> Any:
    if isinstance(content, list) and content and all(_is_text_part(p) for p in content):
        return "\n".join(p["text"] for p in content)
    return normalise(content)


def _is_text_part(part: Any) -> bool:
    return (
        isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
        and all(k in ("type", "text") for k in part)
    )


def _collapse_message(message: Any) -> Any:
    """A context message with its text whitespace-collapsed (case kept): layout never splits partitions."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": _collapse(content)}
    if isinstance(content, list):
        parts = [
            {**p, "text": _collapse(p["text"])}
            if isinstance(p, dict) and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
        return {**message, "content": parts}
    return message


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _envelope(kind: RequestKind, tenant: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    model = body.get("model")
    return {"v": KEY_VERSION, "kind": kind, "tenant": tenant, "namespace": namespace, "model": model}


def _dumps(value: Any) -> bytes:
    # OPT_NON_STR_KEYS: a Mapping built in code may have non-str keys; JSON bodies never do.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
