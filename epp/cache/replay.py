"""A hit sent back: one JSON answer, or the SSE events a streaming request expects.

Either way the answer gets a fresh id ("chatcmpl-cache-<hex>" / "cmpl-cache-<hex>") and `created`, and its
usage says it was cached: the token counts are kept and `prompt_tokens_details.cached_tokens` equals
`prompt_tokens`. The JSON form also carries `"epp_cache": {"tier", "similarity"}`. A streamed replay's
content, concatenated, is byte-equal to the stored answer's.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from epp.cache.types import CacheHit, StoredAnswer

DONE = b"data: [DONE]\n\n"
PIECES = 8  # content is replayed in at most this many pieces...
MIN_PIECE_CHARS = 32  # ...of at least this many characters (so a short answer is one piece)
TEXT_FIELDS = ("reasoning_content", "reasoning", "refusal")  # streamed like content, before it


def replay_json(answer: StoredAnswer, hit: CacheHit, now: float | None = None) -> bytes:
    data = _fresh(answer, now)
    data["epp_cache"] = {"tier": hit.tier, "similarity": hit.similarity}
    return orjson.dumps(data)


def replay_sse(
    answer: StoredAnswer, hit: CacheHit, include_usage: bool, now: float | None = None
) -> list[bytes]:
    """The answer as SSE events (`data: <json>\\n\\n` each), ending with `data: [DONE]`."""
    data = _fresh(answer, now)
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    head = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if data.get(k) is not None}
    usage = data.get("usage")
    if data.get("object") == "text_completion":
        chunks = _completion_chunks(head, choice)
    else:
        chunks = _chat_chunks(head, choice)
    if include_usage:
        for chunk in chunks:
            chunk["usage"] = None  # as OpenAI streams them: usage only on the last chunk
        if usage is not None:
            chunks.append({**head, "object": chunks[0]["object"], "choices": [], "usage": usage})
    return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks] + [DONE]


def split_text(text: str) -> list[str]:
    """`text` in a few pieces whose concatenation is `text` (an empty text is one empty piece)."""
    if len(text) <= MIN_PIECE_CHARS:
        return [text]
    size = max(MIN_PIECE_CHARS, -(-len(text) // PIECES))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _chat_chunks(head: dict[str, Any], choice: dict[str, Any]) -> list[dict[str, Any]]:
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    assert isinstance(message, dict)

    def chunk(delta: dict[str, Any], finish: Any = None, logprobs: Any = None) -> dict[str, Any]:
        one = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [one]}

    content = message.get("content")
    out = [
        chunk(
            {"role": message.get("role") or "assistant", "content": "" if isinstance(content, str) else None}
        )
    ]
    for name in TEXT_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value:
            out += [chunk({name: piece}) for piece in split_text(value)]
    logprobs = choice.get("logprobs")
    if isinstance(content, str) and content:
        pieces = split_text(content)
        out += [chunk({"content": p}, logprobs=logprobs if i == 0 else None) for i, p in enumerate(pieces)]
        logprobs = None
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        first = {"index": index, "id": call.get("id"), "type": call.get("type", "function")}
        first["function"] = {"name": function.get("name", ""), "arguments": ""}
        out.append(chunk({"tool_calls": [first]}))
        for piece in split_text(function.get("arguments") or ""):
            if piece:
                out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    out.append(chunk({}, finish=choice.get("finish_reason", "stop"), logprobs=logprobs))
    return out


def _completion_chunks(head: dict[str, Any], choice: dict[str, Any]) -> list[dict[str, Any]]:
    def chunk(text: str, finish: Any = None, logprobs: Any = None) -> dict[str, Any]:
        one = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "object": "text_completion", "choices": [one]}

    text = choice.get("text") if isinstance(choice.get("text"), str) else ""
    assert isinstance(text, str)
    logprobs = choice.get("logprobs")
    out = [chunk(p, logprobs=logprobs if i == 0 else None) for i, p in enumerate(split_text(text)) if p]
    out.append(chunk("", finish=choice.get("finish_reason", "stop"), logprobs=None if out else logprobs))
    return out


def _fresh(answer: StoredAnswer, now: float | None) -> dict[str, Any]:
    data = orjson.loads(answer.body)
    if not isinstance(data, dict):
        raise ValueError("a stored answer must be a JSON object")
    prefix = "cmpl-cache-" if data.get("object") == "text_completion" else "chatcmpl-cache-"
    data["id"] = prefix + secrets.token_hex(12)
    data["created"] = int(time.time() if now is None else now)
    usage = data.get("usage")
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details")
        details = dict(details) if isinstance(details, dict) else {}
        details["cached_tokens"] = usage.get("prompt_tokens", 0)
        usage["prompt_tokens_details"] = details
    return data
