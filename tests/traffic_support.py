"""A fake LLM provider for traffic tests: an aiohttp front (plain or TLS) over a simulator pod.

Real providers serve odd paths (/compatible-mode/v1/chat/completions) and models the simulator does not
know, so the front records what arrived (path, Authorization, model, stream options), then forwards the
body to the pod's /v1/chat/completions with the pod's own model and relays the answer as it streams.
`fail_with` makes it answer every request with that status instead (a broken provider).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web


@dataclass
class Seen:
    path: str
    authorization: str | None
    body: dict[str, Any]


@dataclass
class ProviderFront:
    pod_url: str  # the simulator pod, http://host:port
    pod_model: str
    ssl_context: ssl.SSLContext | None = None
    fail_with: int | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._session = aiohttp.ClientSession(trust_env=False)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.seen.append(Seen(request.path_qs, request.headers.get("Authorization"), body))
        if self.fail_with is not None:
            return web.json_response({"error": {"message": "provider down"}}, status=self.fail_with)
        assert self._session is not None
        forwarded = {**body, "model": self.pod_model}
        async with self._session.post(f"{self.pod_url}/v1/chat/completions", json=forwarded) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
