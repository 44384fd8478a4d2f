"""CodeFuse-ModelCache's HTTP API on epp's cache: `POST /modelcache`, so ModelCache's clients work unchanged.

Requests (ModelCache's examples post `json=json.dumps(data)`: a JSON *string* holding the JSON; a plain JSON
object is accepted too):
    {"type": "register", "scope": {"model": M}}
    {"type": "insert", "scope": {"model": M}, "chat_info": [{"query": [<message>...], "answer": str}, ...]}
    {"type": "query", "scope": {"model": M}, "query": [<message>...]}       <message> = {"role", "content"}
    {"type": "remove", "scope": {"model": M}, "remove_type": "delete_by_id", "id_list": [id, ...]}
    {"type": "remove", "scope": {"model": M}, "remove_type": "truncate_by_model"}
Replies are HTTP 200 with ModelCache's fields and error codes:
    query   {"errorCode": 0, "errorDesc": "", "cacheHit": bool, "delta_time": "0.0s", "hit_query": str,
             "answer": str}; errorCode 202 when the query cannot be answered (malformed, cache down)
    insert  {"errorCode": 0, "errorDesc": "", "writeStatus": "success", "id_list": [...]}; 302 "exception"
    remove  {"errorCode": 0, "errorDesc": "", "response": {"status": "success", "delete_count": n},
             "writeStatus": "success"}; 401 for an unknown remove_type ("removeStatus": "exception"), 402 when
             the cache is down
    register {"errorCode": 0, "errorDesc": "", "response": "create_success" | "already_exists",
             "writeStatus": "success"}
    101 the body is not JSON, 102 an unknown type, 103 a missing or malformed scope.model.
Model names are normalised as ModelCache does ('-' and '.' become '_'). Entries live in their own scope:
tenant "modelcache", model "modelcache:<normalised>", so they never mix with the gateway's, and a truncate or
delete_by_id touches that scope only. They go to the semantic tier when it is on (and the last message is a
user's text short enough to embed), else to the exact tier; a query looks in the exact tier, then the
semantic one.

Differences from ModelCache: every chat_info item is stored (ModelCache keeps the last one); insert replies
add `id_list` (ModelCache's ids are its MySQL rows; ours are the tiers' entry ids, which delete_by_id takes);
`hit_query` is the matched entry's last user message (ModelCache's is its "role###content|||" splice);
remove's `response` counts `delete_count` instead of ModelCache's per-database strings; registering is not
needed (scopes appear on first insert); GET /modelcache and the model blacklist are not supported.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from epp.cache.key import exact_key, model_digest, semantic_parts
from epp.cache.tiered import TieredCache
from epp.cache.types import CacheQuery, CacheUnavailable, StoredAnswer

logger = logging.getLogger(__name__)
TENANT = "modelcache"
SCOPE_PREFIX = "modelcache:"
TYPES = ("query", "insert", "remove", "register")
REMOVE_TYPES = ("delete_by_id", "truncate_by_model")
MAX_SCOPE_ENTRIES = 100_000  # delete_by_id finds a semantic entry among this many of its scope


class _Failed(Exception):
    def __init__(self, code: int, desc: str) -> None:
        super().__init__(desc)
        self.code = code


def normalise_model(model: str) -> str:
    return model.replace("-", "_").replace(".", "_")


def scoped_model(model: str) -> str:
    return SCOPE_PREFIX + normalise_model(model)


class ModelCacheAPI:
    def __init__(self, cache: TieredCache, semantic: bool, clock: Callable[[], float] = time.time) -> None:
        self._cache = cache
        self._semantic = semantic and cache.semantic is not None
        self._clock = clock
        self._registered: set[str] = set()

    async def handle(self, raw: bytes) -> dict[str, Any]:
        """The reply to one `POST /modelcache` body."""
        try:
            params = _decode(raw)
        except ValueError as exc:
            return _query_reply(101, str(exc))
        kind = params.get("type")
        if kind not in TYPES:
            desc = f"type exception, should one of {list(TYPES)}"
            return _query_reply(102, desc)
        scope = params.get("scope")
        model = scope.get("model") if isinstance(scope, dict) else None
        if not isinstance(model, str) or not model.strip():
            return _query_reply(103, "scope.model: must be a non-empty string")
        try:
            if kind == "query":
                return await self._query(model, params.get("query"))
            if kind == "insert":
                return await self._insert(model, params.get("chat_info"))
            if kind == "remove":
                return await self._remove(model, params.get("remove_type"), params.get("id_list", []))
        except Exception as exc:  # a bug or a tier's unexpected failure: ModelCache's catch-all codes
            logger.exception("POST /modelcache %s failed", kind)
            if kind == "query":
                return _query_reply(202, f"internal error: {type(exc).__name__}")
            code, status = (303, "writeStatus") if kind == "insert" else (402, "writeStatus")
            return {
                "errorCode": code,
                "errorDesc": f"internal error: {type(exc).__name__}",
                status: "exception",
            }
        scope_name = scoped_model(model)
        response = "already_exists" if scope_name in self._registered else "create_success"
        self._registered.add(scope_name)
        return {"errorCode": 0, "errorDesc": "", "response": response, "writeStatus": "success"}

    async def _query(self, model: str, messages: Any) -> dict[str, Any]:
        started = self._clock()
        try:
            query = self._cache_query(model, _messages(messages, "query"))
            hit = await self._cache.lookup(query)
        except (_Failed, CacheUnavailable) as exc:
            return _query_reply(202, str(exc))
        delta = f"{round(self._clock() - started, 2)}s"
        if hit is None:
            return {**_query_reply(0, ""), "delta_time": delta}
        reply = _query_reply(0, "")
        reply.update(cacheHit=True, delta_time=delta, hit_query=hit.answer.text, answer=_text_of(hit.answer))
        return reply

    async def _insert(self, model: str, chat_info: Any) -> dict[str, Any]:
        ids: list[str] = []
        try:
            if not isinstance(chat_info, list) or not chat_info:
                raise _Failed(302, "chat_info: must be a non-empty list of {query, answer}")
            items = [_chat_item(item, i) for i, item in enumerate(chat_info)]
            for messages, text in items:
                query = self._cache_query(model, messages)
                answer = StoredAnswer(
                    _completion(model, text, self._clock()), query.model, self._clock(), 0.0, query.text
                )
                entry_id = ""
                if query.semantic and self._cache.semantic is not None:
                    entry_id = await self._cache.semantic.store(query, answer)  # "": too long to embed
                ids.append(entry_id or await self._cache.exact.store(query, answer))
        except (_Failed, CacheUnavailable) as exc:
            return {"errorCode": 302, "errorDesc": str(exc), "writeStatus": "exception"}
        return {"errorCode": 0, "errorDesc": "", "writeStatus": "success", "id_list": ids}

    async def _remove(self, model: str, remove_type: Any, id_list: Any) -> dict[str, Any]:
        scope = scoped_model(model)
        if remove_type not in REMOVE_TYPES:
            return _remove_refused(f"remove_type must be one of {list(REMOVE_TYPES)}")
        if remove_type == "delete_by_id" and not isinstance(id_list, list):
            return _remove_refused("id_list: must be a list of entry ids")
        try:
            if remove_type == "truncate_by_model":
                count = await self._cache.truncate(scope)
            else:
                count = 0
                for entry_id in await self._owned(scope, [str(i) for i in id_list]):
                    count += await self._cache.delete(entry_id)
        except CacheUnavailable as exc:
            failed = {"status": "failed", "detail": str(exc)}
            return {"errorCode": 402, "errorDesc": str(exc), "response": failed, "writeStatus": "exception"}
        response = {"status": "success", "delete_count": count}
        return {"errorCode": 0, "errorDesc": "", "response": response, "writeStatus": "success"}

    async def _owned(self, scope: str, ids: list[str]) -> list[str]:
        """The ids that name entries of this ModelCache scope: delete_by_id never reaches further."""
        exact_prefix = model_digest(scope) + ":"  # an exact-tier id starts with its model's digest
        owned = [i for i in ids if i.startswith(exact_prefix)]
        rest = [i for i in ids if not i.startswith(exact_prefix)]
        semantic = self._cache.semantic
        if rest and semantic is not None:
            mine = {e.entry_id for e in await semantic.entries(scope, MAX_SCOPE_ENTRIES)}
            owned += [i for i in rest if i in mine]
        return owned

    def _cache_query(self, model: str, messages: list[dict[str, Any]]) -> CacheQuery:
        scope = scoped_model(model)
        body = {"model": scope, "messages": messages}
        parts = semantic_parts("chat", TENANT, "", body)
        partition, text = parts if parts is not None else ("", "")
        return CacheQuery(
            kind="chat",
            tenant=TENANT,
            namespace="",
            model=scope,
            key=exact_key("chat", TENANT, "", body),
            partition=partition,
            text=text,
            semantic=self._semantic and parts is not None,
        )


def _decode(raw: bytes) -> dict[str, Any]:
    """ModelCache's body: JSON, or a JSON string of JSON (its examples' `json=json.dumps(data)`)."""
    try:
        data: Any = orjson.loads(raw)
        if isinstance(data, str):
            data = json.loads(data)
    except (orjson.JSONDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object (or a JSON string holding one)")
    return data


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _Failed(202, f"{where}: must be a non-empty list of {{role, content}} messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _Failed(202, f"{where}[{i}]: must be a message with a role and content")
    return value


def _chat_item(item: Any, index: int) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(item, dict) or not isinstance(item.get("answer"), str):
        raise _Failed(302, f"chat_info[{index}]: must be {{query: [messages], answer: str}}")
    try:
        return _messages(item.get("query"), f"chat_info[{index}].query"), item["answer"]
    except _Failed as exc:
        raise _Failed(302, str(exc)) from None


def _completion(model: str, text: str, now: float) -> bytes:
    """The answer as a chat.completion, so the gateway's replay and the admin API see the usual shape."""
    return orjson.dumps(
        {
            "id": "chatcmpl-modelcache",
            "object": "chat.completion",
            "created": int(now),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
    )


def _text_of(answer: StoredAnswer) -> str:
    try:
        content = orjson.loads(answer.body)["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def _remove_refused(desc: str) -> dict[str, Any]:
    return {"errorCode": 401, "errorDesc": desc, "response": None, "removeStatus": "exception"}


def _query_reply(code: int, desc: str) -> dict[str, Any]:
    return {
        "errorCode": code,
        "errorDesc": desc,
        "cacheHit": False,
        "delta_time": 0,
        "hit_query": "",
        "answer": "",
    }
