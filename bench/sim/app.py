"""The HTTP face of one simulated pod: a raw ASGI app routing OpenAI, /metrics, /health and /sim/* admin.

With an `api_key` it checks it the way vLLM's `--api-key` does: every /v1 route needs
`Authorization: Bearer <key>` (scheme in any case) or gets 401 `{"error": "Unauthorized"}`; /metrics, /health
and the /sim/* admin routes stay open, as does any OPTIONS request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from bench.sim.asgi import (
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    drop_connection,
    read_body,
    send_response,
    wait_disconnect,
)
from bench.sim.openai_api import serve_generation
from bench.sim.pod import SimPod
from bench.sim.protocol import ApiError, parse_chat, parse_completion

INFERENCE_PATHS = {"/v1/completions": parse_completion, "/v1/chat/completions": parse_chat}
GUARDED_PREFIX = "/v1"  # what vLLM's --api-key protects (its /metrics and /health stay open)
UNAUTHORIZED_BODY = orjson.dumps({"error": "Unauthorized"})  # vLLM's AuthenticationMiddleware answer
# Unknown routes and wrong methods are answered by FastAPI itself in vLLM, in Starlette's shape.
NOT_FOUND_BODY = orjson.dumps({"detail": "Not Found"})
METHOD_NOT_ALLOWED_BODY = orjson.dumps({"detail": "Method Not Allowed"})


class MethodNotAllowed(Exception):
    """A known route asked with the wrong method (FastAPI's 405)."""


async def _send_empty(send: Send) -> None:
    """vLLM's /health: `Response(status_code=200)`, an empty body with no content type."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def tokenize_answer(pod: SimPod, raw: bytes) -> dict[str, Any]:
    """vLLM's `POST /tokenize`: `{"model", "prompt"}` or `{"model", "messages"}` -> the pod's prompt ids.

    A chat is rendered as `/v1/chat/completions` renders it (with the assistant's generation prompt), so the
    ids are exactly those the pod would hash for the same body.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    model = body.get("model")
    pod.resolve_model(model if isinstance(model, str) else None)
    if "messages" in body:
        text = parse_chat(raw).prompt_text or ""
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string.", "prompt")
        text = prompt
    ids = pod.prompt_tokenizer.text_ids(text)
    return {"count": len(ids), "max_model_len": pod.profile.max_model_len, "tokens": ids, "token_strs": None}


def _permission(created: int) -> dict[str, Any]:
    """vLLM's ModelPermission with its defaults."""
    return {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


async def _hang_until_cleared(pod: SimPod, receive: Receive) -> bool:
    """Wait for the fault to clear; False if the client gave up first."""
    cleared = asyncio.ensure_future(pod.fault.wait_cleared())
    gone = asyncio.ensure_future(wait_disconnect(receive))
    await asyncio.wait({cleared, gone}, return_when=asyncio.FIRST_COMPLETED)
    cleared.cancel()
    gone.cancel()
    return pod.fault.mode == "none"


def state_view(pod: SimPod) -> dict[str, Any]:
    """JSON debug view of a pod: queues, KV cache, counters and fault."""
    e = pod.engine
    s = e.stats
    return {
        "model": pod.model_name,
        "profile": pod.profile.name,
        "sim_time": pod.clock.now(),
        "time_scale": pod.clock.time_scale,
        "start_time": pod.start_time,
        "fault": {"mode": pod.fault.mode, "status": pod.fault.status},
        "waiting": [r.request_id for r in e.waiting],
        "running": [r.request_id for r in e.running],
        "running_loras": e.running_loras(),
        "waiting_loras": e.waiting_loras(),
        "kv": {
            "num_blocks": e.pool.num_blocks,
            "free_blocks": e.pool.num_free,
            "cached_blocks": e.pool.num_cached,
            "usage": e.pool.usage(),
            "evictions": e.pool.evictions,
        },
        "counters": {
            "prefix_cache_queries": s.prefix_queries,
            "prefix_cache_hits": s.prefix_hits,
            "prompt_tokens": s.prompt_tokens,
            "generation_tokens": s.generation_tokens,
            "preemptions": s.preemptions,
            "steps": s.steps,
            "finished": dict(s.finished),
            "aborted": s.aborted,
        },
    }


class PodApp:
    """ASGI application of one pod."""

    def __init__(self, pod: SimPod, api_key: str | None = None) -> None:
        self.pod = pod
        self._key_digest = None if api_key is None else hashlib.sha256(api_key.encode()).digest()
        self.unauthorized = 0  # requests refused for a missing or wrong key

    def _authorized(self, scope: Scope) -> bool:
        """vLLM's check: an `Authorization` header "Bearer <key>" (any case of the scheme) with the key."""
        if self._key_digest is None or scope.get("method") == "OPTIONS":
            return True
        if not scope["path"].startswith(GUARDED_PREFIX):
            return True
        value = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode("latin-1")).digest(), self._key_digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if not self._authorized(scope):
            self.unauthorized += 1
            await send_response(send, 401, UNAUTHORIZED_BODY)
            return
        try:
            await self._route(scope, receive, send)
        except MethodNotAllowed:
            await send_response(send, 405, METHOD_NOT_ALLOWED_BODY)
        except ApiError as err:
            await send_response(send, err.status, err.body())
        except BodyTooLarge:
            await send_response(send, 413, ApiError(413, "Request body too large.").body())
        except ClientGone:
            return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        pod = self.pod
        parser = INFERENCE_PATHS.get(path)
        if parser is not None:
            _require(method, "POST")
            body = await read_body(receive)
            if not await self._inference_fault(receive, send):
                return
            await serve_generation(pod, parser(body), receive, send)
        elif path == "/health":
            _require(method, "GET")
            await _send_empty(send)
        elif path == "/metrics":
            _require(method, "GET")
            if pod.fault.mode == "metrics_down":
                await drop_connection(send, receive)
            elif pod.fault.mode != "metrics_hang" or await _hang_until_cleared(pod, receive):
                await send_response(send, 200, pod.metrics.render(), CONTENT_TYPE_LATEST.encode())
        elif path == "/v1/models":
            _require(method, "GET")
            await send_response(send, 200, orjson.dumps(self._models()))
        elif path == "/kv_event_sources":
            _require(method, "GET")
            sources = {} if pod.kv_events is None else pod.kv_events.sources()
            await send_response(send, 200, orjson.dumps(sources))
        elif path == "/tokenize":
            _require(method, "POST")
            await send_response(send, 200, orjson.dumps(tokenize_answer(pod, await read_body(receive))))
        elif path == "/reset_prefix_cache":
            _require(method, "POST")
            await read_body(receive)
            pod.engine.reset_prefix_cache()  # vLLM answers 200 even when blocks in use keep it from resetting
            await _send_empty(send)
        elif path.startswith("/sim/"):
            await self._admin(path, method, receive, send)
        else:
            await send_response(send, 404, NOT_FOUND_BODY)

    async def _inference_fault(self, receive: Receive, send: Send) -> bool:
        """Apply the pod's fault to an inference request; True when it should be served."""
        fault = self.pod.fault
        if fault.mode == "error":
            err = ApiError(fault.status, "Simulated pod failure.")
            await send_response(send, fault.status, err.body())
            return False
        if fault.mode == "close":
            await drop_connection(send, receive)
            return False
        if fault.mode == "hang":
            return await _hang_until_cleared(self.pod, receive)
        return True

    async def _admin(self, path: str, method: str, receive: Receive, send: Send) -> None:
        pod = self.pod
        if path == "/sim/state":
            _require(method, "GET")
        elif path == "/sim/fault":
            _require(method, "POST")
            body = await read_body(receive)
            try:
                spec = orjson.loads(body)
                pod.fault.set(spec.get("mode", "none"), spec.get("status", 503))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
                raise ApiError(400, f"bad fault spec: {exc}") from None
        elif path == "/sim/restart":
            _require(method, "POST")
            await read_body(receive)
            pod.restart()
        else:
            await send_response(send, 404, NOT_FOUND_BODY)
            return
        await send_response(send, 200, orjson.dumps(state_view(pod)))

    def _models(self) -> dict[str, Any]:
        pod = self.pod
        created = int(pod.start_time)
        base = {
            "id": pod.model_name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": pod.model_name,
            "parent": None,
            "max_model_len": pod.profile.max_model_len,
            "permission": [_permission(created)],
        }
        adapters = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": f"/adapters/{name}",
                "parent": pod.model_name,
                "max_model_len": None,
                "permission": [_permission(created)],
            }
            for name in pod.lora_modules
        ]
        return {"object": "list", "data": [base, *adapters]}


def _require(method: str, expected: str) -> None:
    if method != expected:
        raise MethodNotAllowed(method)
