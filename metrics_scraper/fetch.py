"""How the scraper fetches a pod's /metrics body: `AiohttpFetcher` by default, or any httpx client.

Scraping runs 2-4 times a second per pod for as long as epp runs, so its per-request cost matters: aiohttp's
client costs a fraction of httpx's per GET (measured with py-spy in `epp serve`). Bodies are requested
uncompressed: on a local network gzip costs both sides more CPU than it saves.
"""

from __future__ import annotations

from typing import Protocol

import aiohttp
import httpx


class FetchError(Exception):
    """The body could not be fetched (connection refused or reset, malformed response, bad URL)."""


class MetricsFetcher(Protocol):
    """GETs a URL; returns (status, body) or raises FetchError."""

    async def get(self, url: str) -> tuple[int, bytes]: ...


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class HttpxFetcher:
    """Fetch with a caller-owned httpx client (tests pass one with a mock transport)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def get(self, url: str) -> tuple[int, bytes]:
        try:
            response = await self._client.get(url)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FetchError(_describe(exc)) from exc
        return response.status_code, response.content


class AiohttpFetcher:
    """Fetch over keep-alive aiohttp connections; its session opens on first use (inside the running loop).

    The caller bounds each fetch (the scraper's timeout); `close()` releases the connections.
    """

    def __init__(self, max_connections: int = 100, keepalive_s: float = 4.0) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s  # below uvicorn's 5 s idle timeout, as vLLM pods use
        self._session: aiohttp.ClientSession | None = None

    async def get(self, url: str) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, keepalive_timeout=self._keepalive_s
                ),
                timeout=aiohttp.ClientTimeout(total=None),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # pods are reached directly, never through an HTTP(S)_PROXY
                skip_auto_headers=("Accept-Encoding",),
            )
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: aiohttp's InvalidURL for a bad URL
            raise FetchError(_describe(exc)) from exc

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
