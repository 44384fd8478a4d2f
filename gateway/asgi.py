"""Raw-ASGI plumbing: read a bounded body, send a whole JSON answer, wait for the client to disconnect.

A body is bounded in size, in time, and by the bytes all bodies together may hold (BodyBudget).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from epp.picking import error_reply
from epp.request import RequestError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
# Scope key the edge (gateway/edge.py) sets once the server holds a request's whole body: the app's first
# receive() then returns it at once, so reading it needs no timer.
BODY_BUFFERED = "epp.body_buffered"
DISCONNECT_HOOK = "epp.on_disconnect"  # scope key of the edge's DisconnectHook (gateway/edge.py)


class DisconnectHook:
    """Set in the scope by the gateway's edge: `callback`, when set, is called once if the client's
    connection is lost before the answer is complete (so the app needs no task watching `receive`)."""

    __slots__ = ("callback",)

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None


class BodyTooLarge(Exception):
    """The request body exceeds the gateway's limit."""


class BodyTimeout(Exception):
    """The client did not send its whole body within the body timeout."""


class BuffersFull(Exception):
    """Holding this body would exceed the bytes all request bodies together may hold."""


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class BadHeaders(Exception):
    """A request header the gateway cannot forward unchanged."""


class BodyBudget:
    """Bytes of request bodies held at once, across all requests (one event loop: no lock needed)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def lease(self) -> BodyLease:
        return BodyLease(self)


class BodyLease:
    """One request's share of a BodyBudget; `release()` when the request is over."""

    __slots__ = ("_budget", "bytes")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.bytes = 0

    def grow(self, n: int) -> None:
        budget = self._budget
        if budget.held + n > budget.capacity:
            raise BuffersFull
        budget.held += n
        self.bytes += n

    def release(self) -> None:
        self._budget.held -= self.bytes
        self.bytes = 0


async def read_body(
    receive: Receive,
    headers: dict[str, str],
    limit: int,
    lease: BodyLease,
    timeout_s: float,
    buffered: bool = False,
) -> bytes:
    """The whole request body, within `timeout_s` and the lease's budget.

    BodyTooLarge as soon as it (or its declared length) exceeds `limit`; BuffersFull when the budget cannot
    hold it (a declared length is reserved up front, so a refusal comes before any byte is buffered);
    BodyTimeout; ClientGone. `buffered`: the server already holds the whole body (BODY_BUFFERED), so no
    read can wait and no timer is set.
    """
    declared = headers.get("content-length", "")
    if declared.isdigit():
        if int(declared) > limit:
            raise BodyTooLarge
        try:
            lease.grow(int(declared))
        except BuffersFull:
            # Read the body and drop it (it fits the size limit): the client then gets the 503 instead of a
            # connection reset halfway through its upload.
            await _discard_body(receive, limit, timeout_s)
            raise
    if buffered:
        return await _read_parts(receive, limit, lease)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_parts(receive, limit, lease)
    except TimeoutError:
        raise BodyTimeout from None


async def _read_parts(receive: Receive, limit: int, lease: BodyLease) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if size > lease.bytes:  # chunked: no declared length
            lease.grow(size - lease.bytes)
        parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _discard_body(receive: Receive, limit: int, timeout_s: float) -> None:
    size = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while size <= limit:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call only after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes = JSON, extra: Headers | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Send, status: int, data: object) -> None:
    await send_bytes(send, status, orjson.dumps(data))


def error_body(
    status: int, message: str, code: str, type_: str = "invalid_request_error", param: str | None = None
) -> bytes:
    """An OpenAI-style error body, rendered the way the pick service renders its own errors."""
    return error_reply(RequestError(status, message, param=param, code=code, type_=type_)).body


def lowered_headers(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name, values decoded as UTF-8 (BadHeaders if one is not).

    UTF-8 because the upstream client encodes header values as UTF-8: a value decoded so goes out with its
    bytes unchanged (latin-1 would re-encode every non-ASCII byte). A repeated header's values are joined
    with ", " (RFC 9110 5.3; `cookie` with "; ", RFC 6265 5.4), so none is lost when forwarded.
    """
    out: dict[str, str] = {}
    try:
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("utf-8")
            if name in out:
                value = out[name] + ("; " if name == "cookie" else ", ") + value
            out[name] = value
    except UnicodeDecodeError:
        raise BadHeaders(f"The value of header `{name}` is not valid UTF-8.") from None
    return out
