"""The cache service's admin API: list, inspect and delete entries (both tiers), truncate a model.

    GET    /v1/cache/entries?model=M&limit=N  -> 200 {"entries": [<entry>...]}   (limit 1..1000, default 100)
    GET    /v1/cache/entries/{id}             -> 200 {"entry": <entry>, "answer": <answer>} | 404 (exact tier)
    DELETE /v1/cache/entries/{id}             -> 200 {"deleted": true} | 404
    DELETE /v1/cache/entries?model=M          -> 200 {"deleted": <count>}   (model is required)
    <entry> = {"entry_id", "tier", "model", "tenant" (a digest), "created_at", "expires_at" (null: none),
               "size_bytes", "text"}
Guarded by the admin token when one is configured (epp.cache.service.http.AdminGuard).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from epp.cache.service.http import error_response, json_response
from epp.cache.service.protocol import ProtocolError, answer_json
from epp.cache.tiered import TieredCache
from epp.cache.types import EntryInfo

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def entry_json(info: EntryInfo) -> dict[str, Any]:
    return {
        "entry_id": info.entry_id,
        "tier": info.tier,
        "model": info.model,
        "tenant": info.tenant,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "size_bytes": info.size_bytes,
        "text": info.text,
    }


class AdminAPI:
    def __init__(self, cache: TieredCache) -> None:
        self._cache = cache

    async def list_or_truncate(self, request: Request) -> Response:
        model = request.query_params.get("model") or None
        if request.method == "DELETE":
            if model is None:
                raise ProtocolError("model: required (DELETE /v1/cache/entries?model=M deletes that model's)")
            return json_response({"deleted": await self._cache.truncate(model)})
        limit_text = request.query_params.get("limit", str(DEFAULT_LIMIT))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise ProtocolError(f"limit: must be an integer in 1..{MAX_LIMIT}")
        entries = await self._cache.entries(model, int(limit_text))
        return json_response({"entries": [entry_json(e) for e in entries]})

    async def one(self, request: Request) -> Response:
        entry_id = request.path_params["entry_id"]
        if request.method == "DELETE":
            if await self._cache.delete(entry_id):
                return json_response({"deleted": True})
            return error_response(404, f"no entry {entry_id!r}", "not_found")
        found = await self._cache.get(entry_id)
        if found is None:
            return error_response(404, f"no exact-tier entry {entry_id!r}", "not_found")
        info, answer = found
        return Response(
            orjson.dumps({"entry": entry_json(info), "answer": answer_json(answer)}),
            media_type="application/json",
        )
