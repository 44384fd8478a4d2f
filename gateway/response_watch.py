"""Watch a pod's answer as it is relayed: when the first content token passes, and the token usage.

TTFT ends at the first chunk that carries content: for SSE, the first event whose choices have non-empty
`delta.content`, `delta.reasoning_content`, `delta.tool_calls` or `text` (vLLM's first chat event only
carries the role); for a JSON answer, its first byte (the whole answer comes at once). Usage is the
`usage` object of the JSON answer, or of the stream's last event that has one
(`stream_options.include_usage`). Events are parsed only until the first content, then only when a chunk
mentions usage, so a long stream costs a substring search per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MAX_JSON_BYTES = 4 * 1024 * 1024  # a JSON answer longer than this is relayed but its usage is not read
_CONTENT_KEYS = ("content", "reasoning_content", "tool_calls")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_prompt_tokens: int | None


class ResponseWatcher:
    """Feed every relayed chunk to `feed` (True once: the chunk with the first content), then `usage()`."""

    __slots__ = ("_buffer", "_json_parts", "_json_size", "_seen_content", "_sse", "_usage")

    def __init__(self, content_type: str) -> None:
        self._sse = content_type.startswith("text/event-stream")
        self._seen_content = False
        self._buffer = b""  # SSE: an event not yet complete
        self._json_parts: list[bytes] = []
        self._json_size = 0
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bool:
        if not self._sse:
            if self._json_size <= MAX_JSON_BYTES:
                self._json_parts.append(chunk)
                self._json_size += len(chunk)
            first = not self._seen_content
            self._seen_content = True
            return first
        if self._seen_content and b"usage" not in chunk and not self._buffer:
            return False
        data = self._buffer + chunk
        events = data.replace(b"\r\n", b"\n").split(b"\n\n")
        self._buffer = events.pop()  # after the last separator: incomplete (usually empty)
        first = False
        for event in events:
            if self._seen_content and b"usage" not in event:
                continue
            payload = _data_of(event)
            if payload is None or payload == b"[DONE]":
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self._usage = usage
            if not self._seen_content and _has_content(obj):
                self._seen_content = first = True
        return first

    @property
    def is_sse(self) -> bool:
        return self._sse

    def usage(self) -> Usage | None:
        usage = self._usage
        if usage is None and self._json_parts:
            try:
                obj = orjson.loads(b"".join(self._json_parts))
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                usage = obj["usage"]
        if usage is None:
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), _int(cached))


def _data_of(event: bytes) -> bytes | None:
    parts = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None


def _has_content(obj: dict[str, Any]) -> bool:
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        if isinstance(text, str) and text:
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(delta.get(k) for k in _CONTENT_KEYS):
            return True
    return False


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
