"""List a collection, then watch it from the list's resourceVersion, keeping a local copy in step.

Like client-go's reflector: watch events move the copy and the resourceVersion; BOOKMARKs only move the
resourceVersion (asked for with `allowWatchBookmarks`); a 410 Gone (the version was compacted away) lists
again; a connection error retries with exponential back-off and jitter, the copy untouched meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from epp.discovery.backoff import Backoff
from epp.discovery.kube_client import ApiError, Gone, KubeClient
from epp.discovery.status import DiscoveryMetrics

logger = logging.getLogger(__name__)

Objects = Mapping[str, dict[str, Any]]
QUICK_WATCH_S = 1.0  # a watch that ends this fast with no event is backed off from, not spun on


class Reflector:
    """`run()` forever: `on_change(objects)` after every list and change; `on_ok()` when the apiserver
    answered, `on_error(reason)` when it did not. With `optional`, a 404 (the API is not installed) ends
    `run()` after one log line."""

    def __init__(
        self,
        client: KubeClient,
        resource: str,
        path: str,
        params: Mapping[str, str],
        on_change: Callable[[Objects], None],
        on_ok: Callable[[], None],
        on_error: Callable[[str, str], None],
        metrics: DiscoveryMetrics,
        backoff: Backoff,
        watch_timeout_s: float = 300.0,
        optional: bool = False,
    ) -> None:
        self.resource = resource
        self.path = path
        self.params = dict(params)
        self.objects: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = False
        self._client = client
        self._on_change = on_change
        self._on_ok = on_ok
        self._on_error = on_error
        self._metrics = metrics
        self._backoff = backoff
        self._watch_timeout_s = watch_timeout_s
        self._optional = optional

    async def run(self) -> None:
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                quiet = await self._watch()
                if quiet:
                    await asyncio.sleep(self._backoff.next_delay())
            except Gone as exc:
                logger.info("%s: watch expired (%s), listing again", self.resource, exc.reason)
                self._count("relist")
                self.resource_version = None
            except ApiError as exc:
                if exc.status == 404 and self._optional:
                    logger.info("%s: not served by the apiserver (404), not watched", self.resource)
                    return
                hint = " (check the RBAC rules, docs/operations.md)" if exc.status in (401, 403) else ""
                self._on_error(self.resource, f"{exc}{hint}")
                await asyncio.sleep(self._backoff.next_delay())
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._on_error(self.resource, _describe(exc))
                await asyncio.sleep(self._backoff.next_delay())

    async def _list(self) -> None:
        doc = await self._client.list(self.path, self.params)
        self.objects = {_key(item): item for item in doc.get("items", []) if isinstance(item, dict)}
        self.resource_version = str(doc.get("metadata", {}).get("resourceVersion") or "") or None
        self.synced = True
        self._backoff.reset()
        self._count("list")
        self._on_ok()
        self._on_change(self.objects)

    async def _watch(self) -> bool:
        """One watch request; True when it ended quickly without telling anything."""
        params = {**self.params, "allowWatchBookmarks": "true"}
        if self.resource_version is not None:
            params["resourceVersion"] = self.resource_version
        started, seen = time.monotonic(), 0
        async for event in self._client.watch(self.path, params, self._watch_timeout_s, on_open=self._opened):
            seen += 1
            kind = str(event.get("type"))
            obj = event["object"]
            self._count(kind)
            version = obj.get("metadata", {}).get("resourceVersion")
            if version:
                self.resource_version = str(version)
            if kind in ("ADDED", "MODIFIED"):
                self.objects[_key(obj)] = obj
            elif kind == "DELETED":
                self.objects.pop(_key(obj), None)
            else:
                continue  # BOOKMARK (and types added later): the version only
            self._on_change(self.objects)
        return seen == 0 and time.monotonic() - started < QUICK_WATCH_S

    def _opened(self) -> None:
        self._backoff.reset()
        self._on_ok()

    def _count(self, kind: str) -> None:
        self._metrics.events.labels(self._metrics.mode, self.resource, kind).inc()


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
