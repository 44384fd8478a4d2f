"""The models the pool serves: the union of the pods' /v1/models, plus InferenceModel names and LoRA adapters.

Pods are asked every `ttl_s` by `run()` and on demand; a model that is not in the cache triggers one early
refresh (at most every `min_refresh_s`), so an adapter loaded a moment ago is found. An entry whose `parent`
names another model is a LoRA adapter (vLLM lists `--lora-modules` that way): that, and the pods' LoRA
metrics, is how epp tells an adapter from a base model, never from a name that differs from the requested one.
With pod credentials (epp.pod_auth) each /v1/models request carries the pod API key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Any

import httpx
import orjson

from epp.datastore import Datastore, Endpoint
from epp.pod_auth import PodCredentials

logger = logging.getLogger(__name__)


class ModelCatalog:
    """Answers "is this model served?" and GET /v1/models for the whole pool."""

    def __init__(
        self,
        datastore: Datastore,
        client: httpx.AsyncClient,
        inference_models: Collection[str] = frozenset(),
        ttl_s: float = 2.0,
        min_refresh_s: float = 0.25,
        timeout_s: float = 2.0,
        credentials: PodCredentials | None = None,
    ) -> None:
        self._datastore = datastore
        self._headers = credentials.auth_headers() if credentials is not None else {}
        self._client = client
        self._inference_models = inference_models
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._models: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self._adapters: set[str] = set()
        self._answered = False  # at least one pod answered the last refresh
        self._refreshed_at = float("-inf")
        self._lock = asyncio.Lock()
        self._refused_by: set[str] = set()  # pods that answered 401/403, warned about once

    async def refresh(self, max_age_s: float = 0.0) -> None:
        """Ask every pod for its models unless the cache is at most `max_age_s` old; the union replaces the
        cache (the first pod's entry of an id wins). Concurrent callers share one refresh."""
        async with self._lock:
            if self._age() <= max_age_s:
                return
            endpoints = self._datastore.endpoints()
            answers = await asyncio.gather(*(self._fetch(e) for e in endpoints))
            models: list[dict[str, Any]] = []
            ids: set[str] = set()
            adapters: set[str] = set()
            for answer in answers:
                for entry in answer or ():
                    model_id = entry.get("id")
                    if isinstance(model_id, str) and model_id not in ids:
                        ids.add(model_id)
                        models.append(entry)
                        parent = entry.get("parent")
                        if isinstance(parent, str) and parent and parent != model_id:
                            adapters.add(model_id)
            self._models, self._ids, self._adapters = models, ids, adapters
            self._answered = any(a is not None for a in answers)
            self._refreshed_at = time.monotonic()

    async def _fetch(self, endpoint: Endpoint) -> list[dict[str, Any]] | None:
        try:
            response = await self._client.get(
                f"{endpoint.base_url}/v1/models", headers=self._headers, timeout=self._timeout_s
            )
            if response.status_code in (401, 403):
                self._refused(endpoint, response.status_code)
                return None
            response.raise_for_status()
            data = orjson.loads(response.content).get("data")
        except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError) as exc:
            logger.debug("models of %s unavailable: %r", endpoint.name, exc)
            return None
        if not isinstance(data, list):
            return None
        return [entry for entry in data if isinstance(entry, dict)]

    def _refused(self, endpoint: Endpoint, status: int) -> None:
        if endpoint.name in self._refused_by:
            return
        self._refused_by.add(endpoint.name)
        hint = "check the pod API key" if self._headers else "set --pod-api-key-file or EPP_POD_API_KEY"
        logger.warning("%s refused GET /v1/models with HTTP %d: %s", endpoint.name, status, hint)

    def _age(self) -> float:
        return time.monotonic() - self._refreshed_at

    async def run(self) -> None:
        """Refresh every `ttl_s` until cancelled (adapter names are then known to both data planes)."""
        while True:
            await self.refresh(self._ttl_s)
            await asyncio.sleep(self._ttl_s)

    def is_adapter(self, name: str) -> bool:
        """Whether a pod's /v1/models lists `name` as a LoRA adapter (an entry with a `parent`) or a pod's
        LoRA metrics report it running or waiting."""
        return name in self._adapters or self._datastore.reports_adapter(name)

    async def listing(self) -> dict[str, Any] | None:
        """The OpenAI `list` object of exactly the names requests may use; None when no pod answered.

        With InferenceModels configured those are their names (nothing else resolves); without, the pods'.
        """
        if self._inference_models:
            created = int(time.time())
            data = [
                {"id": name, "object": "model", "created": created, "owned_by": "epp", "parent": None}
                for name in self._inference_models
            ]
            return {"object": "list", "data": data}
        await self.refresh(self._ttl_s)
        if not self._answered:
            return None
        return {"object": "list", "data": list(self._models)}

    async def is_served(self, model: str) -> bool:
        """False only when pods answered and none serves `model` (nor an InferenceModel or adapter names it).

        When no pod can say, the model is given the benefit of the doubt: scheduling then decides.
        """
        if self._known(model):
            return True
        await self.refresh(self._min_refresh_s)
        return self._known(model) or not self._answered

    def _known(self, model: str) -> bool:
        return model in self._ids or model in self._inference_models or self.is_adapter(model)
