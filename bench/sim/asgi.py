"""Small raw-ASGI helpers: read a request body, send a whole response, drop a connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024 * 1024


class BodyTooLarge(Exception):
    """The request body exceeds MAX_BODY_BYTES."""


class ClientGone(Exception):
    """The client disconnected before the body was read."""


async def read_body(receive: Receive) -> bytes:
    """The whole request body (uvicorn has already undone any chunked transfer encoding)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_response(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json"
) -> None:
    """Send a complete response."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call only after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def drop_connection(send: Send, receive: Receive) -> None:
    """Close the TCP connection without any response.

    ASGI has no message for this, so reach uvicorn's transport through the bound `send`; then wait for the
    disconnect so the server does not try to answer 500 for a response that was never started.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("cannot drop the connection: server does not expose its transport")
    transport.close()
    await asyncio.wait_for(wait_disconnect(receive), timeout=5.0)
