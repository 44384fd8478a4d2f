"""Raw-ASGI plumbing: read a bounded body, send a whole JSON answer, wait for the client to disconnect."""

from __future__ import annotations

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


class BodyTooLarge(Exception):
    """The request body exceeds the gateway's limit."""


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The whole request body; BodyTooLarge as soon as it (or its declared length) exceeds `limit`."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
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
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call only after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes = JSON) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
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
    """Request headers with lower-case names (a repeated header keeps its last value)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
