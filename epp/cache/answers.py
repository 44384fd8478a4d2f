"""Which answers may be replayed, and a streamed (SSE) answer assembled into the JSON form the cache keeps.

Storable: a JSON object of the request's kind ("chat.completion" / "text_completion"), exactly one choice,
finished by "stop" (or, chat, "tool_calls"), no "error". Anything else (a `length` or `content_filter`
finish, an aborted stream, `n > 1`, an error) is never replayed.
"""

from __future__ import annotations

from typing import Any

import orjson

from epp.cache.types import RequestKind

OBJECTS: dict[RequestKind, str] = {"chat": "chat.completion", "completion": "text_completion"}
CHUNK_OBJECTS: dict[RequestKind, str] = {"chat": "chat.completion.chunk", "completion": "text_completion"}
FINISHES: dict[RequestKind, frozenset[str]] = {
    "chat": frozenset({"stop", "tool_calls"}),
    "completion": frozenset({"stop"}),
}
KNOWN_BAD_FINISHES = frozenset({"length", "content_filter", "abort", "error"})
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


def storable_reason(body: bytes, kind: RequestKind, max_bytes: int | None = None) -> str | None:
    """None when `body` (a non-streamed answer) may be stored; else a short reason (a metric label)."""
    if max_bytes is not None and len(body) > max_bytes:
        return "too_large"
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not_json"
    if not isinstance(data, dict):
        return "not_json"
    if data.get("error") is not None:
        return "error"
    if data.get("object") != OBJECTS[kind]:
        return "not_completion"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no_choices"
    if len(choices) > 1:
        return "n>1"
    choice = choices[0]
    if not isinstance(choice, dict):
        return "not_completion"
    return _finish_reason(kind, choice.get("finish_reason"))


def _finish_reason(kind: RequestKind, finish: object) -> str | None:
    if isinstance(finish, str) and finish in FINISHES[kind]:
        return None
    if finish is None:
        return "unfinished"
    return finish if finish in KNOWN_BAD_FINISHES else "finish_other"


class StreamAssembler:
    """Feed it an SSE answer's bytes as they pass (split anywhere); `result()` is the JSON answer, or None.

    None unless `data: [DONE]` arrived, with one choice, a storable finish and no error event. Past
    `max_bytes` of assembled text (or a pending line that long) it gives up and drops what it held;
    `failed` says why.
    """

    def __init__(self, kind: RequestKind, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.kind = kind
        self.max_bytes = max_bytes
        self.failed: str | None = None  # why result() is None, once known
        self.done = False
        self._buffer = b""
        self._data: list[bytes] = []  # the current event's data lines
        self._event = b""
        self._size = 0
        self._head: dict[str, Any] = {}  # id, created, model, system_fingerprint
        self._role = "assistant"
        self._texts: dict[str, list[str]] = {}  # message field (content, reasoning_content, ...) -> pieces
        self._tools: dict[int, dict[str, Any]] = {}
        self._finish: object = None
        self._usage: Any = None

    def feed(self, chunk: bytes) -> None:
        if self.failed or self.done or not chunk:
            return
        buffer = self._buffer + chunk
        start = 0
        while True:
            # A line ends at LF, CRLF or a lone CR; a CR at the very end may be the first half of a CRLF.
            lf = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
            if cr >= 0:
                if cr == len(buffer) - 1:
                    break
                end, nxt = cr, cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(buffer[start:end])
            start = nxt
            if self.failed or self.done:
                self._buffer = b""
                return
        self._buffer = buffer[start:]
        if len(self._buffer) > self.max_bytes:
            self._fail("too_large")

    def result(self) -> bytes | None:
        if self._buffer.endswith(b"\r") and not (self.failed or self.done):
            self.feed(b"\n")  # the stream ended: a held-back CR ends its line (and no CRLF can follow)
        if self.failed or not self.done:
            if not self.failed:
                self.failed = "incomplete_stream"
            return None
        reason = _finish_reason(self.kind, self._finish)
        if reason is not None:
            self.failed = reason
            return None
        choice: dict[str, Any] = {"index": 0}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": self._role, "content": None}
            for name, pieces in self._texts.items():
                message[name] = "".join(pieces)
            if self._tools:
                calls = [self._tools[i] for i in sorted(self._tools)]
                for call in calls:
                    call["function"] = {"name": "", "arguments": "", **call["function"]}
                message["tool_calls"] = calls
            choice["message"] = message
        else:
            choice["text"] = "".join(self._texts.get("text", []))
        choice["logprobs"] = None
        choice["finish_reason"] = self._finish
        answer: dict[str, Any] = {"id": self._head.get("id", ""), "object": OBJECTS[self.kind]}
        answer.update((k, v) for k, v in self._head.items() if k != "id")
        answer["choices"] = [choice]
        if self._usage is not None:
            answer["usage"] = self._usage
        return orjson.dumps(answer)

    def _line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
            return
        if line.startswith(b":"):
            return  # a comment (keep-alive)
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value

    def _dispatch(self) -> None:
        data, event = b"\n".join(self._data), self._event
        self._data, self._event = [], b""
        if event == b"error":
            self._fail("error")
            return
        if not data and event == b"":
            return
        if data.strip() == b"[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._fail("bad_event")
            return
        if not isinstance(chunk, dict):
            self._fail("bad_event")
        elif chunk.get("error") is not None:
            self._fail("error")
        elif chunk.get("object") not in (None, CHUNK_OBJECTS[self.kind]):
            self._fail("not_completion")
        else:
            self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        for name in ("id", "created", "model", "system_fingerprint"):
            value = chunk.get(name)
            if value is not None and (name != "id" or name not in self._head):  # the first id, latest others
                self._head[name] = value
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            self._fail("bad_event")
            return
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                self._fail("n>1")
                return
            if choice.get("logprobs") is not None:
                self._fail("logprobs")  # not replayed piecewise; such answers are rare enough to skip
                return
            if self.kind == "chat":
                self._delta(choice.get("delta") or {})
            elif isinstance(choice.get("text"), str):
                self._text("text", choice["text"])
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]

    def _delta(self, delta: Any) -> None:
        if not isinstance(delta, dict):
            self._fail("bad_event")
            return
        for name, value in delta.items():
            if value is None:
                continue
            if name == "role" and isinstance(value, str):
                self._role = value
            elif name == "tool_calls" and isinstance(value, list):
                for call in value:
                    self._tool_call(call)
            elif isinstance(value, str):
                self._text(name, value)  # content, reasoning_content, refusal: concatenated
            else:
                self._fail("unsupported_delta")  # e.g. the legacy function_call or audio
                return

    def _tool_call(self, call: Any) -> None:
        if not isinstance(call, dict) or not isinstance(call.get("index", 0), int):
            self._fail("bad_event")
            return
        slot = self._tools.setdefault(call.get("index", 0), {"id": "", "type": "function", "function": {}})
        if isinstance(call.get("id"), str):
            slot["id"] = call["id"]
        if isinstance(call.get("type"), str):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        for name in ("name", "arguments"):
            piece = function.get(name) if isinstance(function, dict) else None
            if isinstance(piece, str):
                slot["function"][name] = slot["function"].get(name, "") + piece
                self._grow(len(piece))

    def _text(self, name: str, piece: str) -> None:
        self._texts.setdefault(name, []).append(piece)
        self._grow(len(piece))

    def _grow(self, chars: int) -> None:
        self._size += chars  # characters: close enough to bytes for a cap
        if self._size > self.max_bytes:
            self._fail("too_large")

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
        self._texts, self._tools, self._buffer, self._data = {}, {}, b"", []
