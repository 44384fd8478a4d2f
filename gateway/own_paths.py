"""The gateway's own paths alone (/metrics, /healthz): a worker's private metrics port (`--workers N`)."""

from __future__ import annotations

from typing import Any

from gateway.app import OWN_PATHS
from gateway.asgi import Receive, Scope, Send, error_body, send_bytes


class OwnPathsOnly:
    """Serves `app`'s own paths; anything else is a JSON 404 (no requests are proxied on this port)."""

    def __init__(self, app: Any) -> None:  # an ASGI application
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path in OWN_PATHS:
            await self._app(scope, receive, send)
        else:
            body = error_body(404, f"Route {path} not found: this is a metrics port.", "not_found")
            await send_bytes(send, 404, body)
