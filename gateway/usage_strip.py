"""Drop the usage-only SSE event that epp asked a provider for (stream_options.include_usage) on the
client's behalf, so the client sees the stream it asked for while epp still counts the tokens."""

from __future__ import annotations

import orjson


class UsageStripper:
    """`feed(chunk) -> bytes to relay`: whole events pass through, except one with `usage` and no choices.

    Events are cut at blank lines; a partial event is held until it completes (SSE clients only act on
    whole events anyway), so nothing is reordered. `flush()` returns what is still held at the end.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n"))
        if cut < 0:
            self._held = data
            return b""
        end = cut + (4 if data.startswith(b"\r\n\r\n", cut) else 2)
        whole, self._held = data[:end], data[end:]
        if b"usage" not in whole:  # the common case: no parsing
            return whole
        kept = [e for e in _events(whole) if not _usage_only(e)]
        return b"".join(kept)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _events(data: bytes) -> list[bytes]:
    """`data` (whole events) split after each blank line, separators kept."""
    out: list[bytes] = []
    start = 0
    while start < len(data):
        n, r = data.find(b"\n\n", start), data.find(b"\r\n\r\n", start)
        if n < 0 and r < 0:
            out.append(data[start:])
            break
        end = r + 4 if r >= 0 and (n < 0 or r < n) else n + 2
        out.append(data[start:end])
        start = end
    return out


def _usage_only(event: bytes) -> bool:
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if len(lines) != 1 or b"usage" not in lines[0]:
        return False
    try:
        obj = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("usage"), dict) and not obj.get("choices")
