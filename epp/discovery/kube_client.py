"""A minimal Kubernetes API client over aiohttp: list a collection, watch it as newline-delimited events.

Only what discovery needs: GET with query parameters, a bearer token (re-read before every request, since
projected service-account tokens rotate) and the cluster CA. The wire format is the apiserver's: a list is
`{"kind": "...List", "metadata": {"resourceVersion": ...}, "items": [...]}`; a watch streams one
`{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": {...}}` per line.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_LINE_BYTES = 16 * 1024 * 1024  # one watch event; a Pod with managedFields is tens of KiB


class KubeConfigError(ValueError):
    """In-cluster settings are missing (not running in a pod, no service account mounted)."""


class ApiError(Exception):
    """The apiserver answered with an error status (or an ERROR watch event)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class Gone(ApiError):
    """410: the resourceVersion is too old to watch from; list again."""


@dataclass(frozen=True)
class KubeConnection:
    """Where the apiserver is and how to authenticate to it."""

    base_url: str
    token_path: Path | None = None
    ca_path: Path | None = None
    namespace: str | None = None  # the pod's own namespace, in a cluster


def in_cluster(env: Mapping[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConnection:
    """KUBERNETES_SERVICE_HOST/PORT and the mounted service account; KubeConfigError when absent."""
    host = env.get("KUBERNETES_SERVICE_HOST")
    if not host:
        raise KubeConfigError("KUBERNETES_SERVICE_HOST is not set: not in a cluster (use --kube-api URL)")
    port = env.get("KUBERNETES_SERVICE_PORT", "443")
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    for path in (token, ca):
        if not path.is_file():
            raise KubeConfigError(f"{path} is missing: no service account mounted in this pod")
    namespace_file = sa_dir / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    host = f"[{host}]" if ":" in host else host
    return KubeConnection(f"https://{host}:{port}", token, ca, namespace)


def explicit(url: str, token_path: Path | None = None, ca_path: Path | None = None) -> KubeConnection:
    """`--kube-api URL` (tests, `kubectl proxy`); the token and CA only when given."""
    return KubeConnection(url.rstrip("/"), token_path, ca_path)


class KubeClient:
    """One aiohttp session to the apiserver; `list` and `watch` raise ApiError / Gone / aiohttp errors."""

    def __init__(self, connection: KubeConnection, request_timeout_s: float = 30.0) -> None:
        self.connection = connection
        self._timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_context: ssl.SSLContext | bool = True
            if self.connection.ca_path is not None:
                ssl_context = ssl.create_default_context(cafile=str(self.connection.ca_path))
            connector = aiohttp.TCPConnector(ssl=ssl_context, limit=8)
            # Never through HTTP(S)_PROXY: the apiserver is reached directly.
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.connection.token_path is not None:
            headers["Authorization"] = f"Bearer {self.connection.token_path.read_text().strip()}"
        return headers

    async def list(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        url = self.connection.base_url + path
        async with self._client().get(
            url, params=dict(params), headers=self._headers(), timeout=timeout
        ) as r:
            body = await r.read()
            if r.status != 200:
                raise _error(r.status, body)
            doc = orjson.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
            raise ApiError(r.status, "the list is not a JSON object with items")
        return doc

    async def watch(
        self,
        path: str,
        params: Mapping[str, str],
        timeout_s: float,
        on_open: Callable[[], None] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request until the server ends it (its `timeoutSeconds`); an ERROR event
        raises (Gone for 410). `on_open` is called once the apiserver accepted the watch."""
        # No total timeout: a watch is long; a silent connection is cut after timeout_s plus a margin.
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout_s, sock_read=timeout_s + 30)
        query = {**params, "watch": "1", "timeoutSeconds": str(int(timeout_s))}
        url = self.connection.base_url + path
        async with self._client().get(url, params=query, headers=self._headers(), timeout=timeout) as r:
            if r.status != 200:
                raise _error(r.status, await r.read())
            if on_open is not None:
                on_open()
            buffer = b""
            async for chunk in r.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                if len(buffer) > MAX_LINE_BYTES:
                    raise ApiError(r.status, f"a watch event is longer than {MAX_LINE_BYTES} bytes")
                for line in lines:
                    if line.strip():
                        yield _event(line)
            if buffer.strip():
                yield _event(buffer)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _event(line: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ApiError(200, "a watch line is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ApiError(200, "a watch event without an object")
    if event.get("type") == "ERROR":
        status = event["object"]
        raise _status_error(
            int(status.get("code") or 500), str(status.get("message") or status.get("reason"))
        )
    return event


def _error(status: int, body: bytes) -> ApiError:
    message = body[:200].decode("utf-8", errors="replace")
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and doc.get("kind") == "Status":
            message = str(doc.get("message") or doc.get("reason"))
    except orjson.JSONDecodeError:
        pass
    return _status_error(status, message)


def _status_error(status: int, message: str) -> ApiError:
    return Gone(status, message) if status == 410 else ApiError(status, message)
