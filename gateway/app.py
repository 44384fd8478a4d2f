"""The gateway's ASGI app: the allowed routes (gateway/edge.py has the connection limits).

`POST` on an allowed path goes through the pipeline to a pod; `GET /v1/models` lists the models; `/metrics`
and `/healthz` are the gateway's own. Any other path is a JSON 404, a wrong method a JSON 405 with `Allow`.
Every answer the gateway makes itself is OpenAI-style JSON with a 4xx/5xx status, never a traceback. A client
that disconnects cancels its request: the upstream connection is closed and the pod's in-flight count freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from epp import limits
from epp.datastore import Datastore
from epp.model_catalog import ModelCatalog
from epp.request import request_id_from
from epp.routes import MODELS_PATH, AllowedRoutes
from gateway.asgi import (
    BODY_BUFFERED,
    DISCONNECT_HOOK,
    BadHeaders,
    BodyBudget,
    BodyTimeout,
    BodyTooLarge,
    BuffersFull,
    ClientGone,
    DisconnectHook,
    Receive,
    Scope,
    Send,
    error_body,
    lowered_headers,
    read_body,
    send_bytes,
    send_json,
    wait_disconnect,
)
from gateway.context import OUTCOME_CLIENT_GONE, OUTCOME_REFUSED, BytesReply, RequestContext, error_json
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.record import RequestRecorder
from gateway.streaming import relay

logger = logging.getLogger(__name__)

OWN_PATHS = frozenset({"/metrics", "/healthz"})  # answered by the gateway, GET only
CLOSE = (b"connection", b"close")  # after a refused body: the rest of it is not worth reading
RETRY_AFTER_S = 1
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """One body's size and time, and the bytes all bodies being handled may hold together."""

    max_body_bytes: int = limits.DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = limits.DEFAULT_BODY_TIMEOUT_S
    max_buffered_body_bytes: int = limits.DEFAULT_MAX_BUFFERED_BODY_BYTES


class GatewayApp:
    """ASGI application; every dependency is passed in."""

    def __init__(
        self,
        pipeline: Pipeline,
        catalog: ModelCatalog,
        datastore: Datastore,
        metrics: GatewayMetrics,
        recorder: RequestRecorder,
        registry: CollectorRegistry,
        body_limits: BodyLimits,
        routes: AllowedRoutes,
        health: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._catalog = catalog
        self._datastore = datastore
        self._metrics = metrics
        self._recorder = recorder
        self._registry = registry
        self._limits = body_limits
        self._budget = BodyBudget(body_limits.max_buffered_body_bytes)
        self._routes = routes
        # The methods of each allowed path, looked up once (the routes are fixed for the app's life).
        self._methods = {path: routes.methods(path) for path in routes.paths()}
        self._methods.update(dict.fromkeys(OWN_PATHS, frozenset({"GET"})))
        self._health = health  # more /healthz fields (pod discovery's state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # served with lifespan off; websockets are not part of the API
            return
        path: str = scope["path"]
        method: str = scope["method"]
        allowed = self._methods.get(path, _NONE)
        if not allowed:
            await send_bytes(send, 404, error_body(404, f"Route {path} not found.", "not_found"))
        elif method not in allowed:
            await _method_not_allowed(send, method, allowed)
        elif method == "POST":
            await self._proxy(path, scope, receive, send)
        elif path == MODELS_PATH:
            await self._models(send)
        elif path == "/metrics":
            body = generate_latest(self._registry)
            await send_bytes(send, 200, body, CONTENT_TYPE_LATEST.encode())
        elif path == "/healthz":
            await self._healthz(send)
        else:  # the server refuses such routes at startup (gateway/server.py check_routes)
            await _method_not_allowed(send, method, frozenset({"POST"}))

    async def _proxy(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = lowered_headers(scope)
        except BadHeaders as exc:
            headers, bad_headers = {}, str(exc)
        else:
            bad_headers = ""
        headers["x-request-id"] = request_id_from(headers)  # forwarded too: both planes log the same id
        ctx = RequestContext(path, headers, b"")
        self._recorder.watch(ctx)  # before the pipeline runs: its reply hook wraps outermost
        lease = self._budget.lease()
        self._metrics.in_flight.inc()
        try:
            if bad_headers:
                await self._refuse(ctx, send, 400, bad_headers, "invalid_header")
                return
            body_limits = self._limits
            try:
                ctx.body = await read_body(
                    receive,
                    headers,
                    body_limits.max_body_bytes,
                    lease,
                    body_limits.body_timeout_s,
                    scope.get(BODY_BUFFERED, False),
                )
            except BodyTooLarge:
                message = f"Request body exceeds {body_limits.max_body_bytes} bytes."
                await self._refuse(ctx, send, 413, message, "body_too_large", [CLOSE])
            except BuffersFull:
                message = "The gateway holds too many request bodies right now; retry shortly."
                retry = (b"retry-after", str(RETRY_AFTER_S).encode())
                await self._refuse(ctx, send, 503, message, "server_busy", [CLOSE, retry], "api_error")
            except BodyTimeout:
                message = f"Request body not received within {body_limits.body_timeout_s:g} s."
                await self._refuse(ctx, send, 408, message, "body_timeout", [CLOSE])
            except ClientGone:
                ctx.result = OUTCOME_CLIENT_GONE
            else:
                await self._answer_until_disconnect(ctx, receive, send, scope.get(DISCONNECT_HOOK))
        finally:
            lease.release()
            self._metrics.in_flight.dec()
            self._recorder.record(ctx, time.perf_counter() - ctx.started)
            ctx.reply_hooks.clear()  # a refused request's (never applied): they hold `ctx`, a cycle

    async def _refuse(
        self,
        ctx: RequestContext,
        send: Send,
        status: int,
        message: str,
        code: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        ctx.result = OUTCOME_REFUSED
        reply = BytesReply(status, error_body(status, message, code, type_))
        reply.headers += extra or []
        with contextlib.suppress(OSError):
            await relay(reply, send, ctx)

    async def _answer_until_disconnect(
        self, ctx: RequestContext, receive: Receive, send: Send, hook: DisconnectHook | None
    ) -> None:
        """Answer in this task, cancelled if the client leaves: the edge's `hook` says so when it serves
        (no extra task), else a task watching `receive` does."""
        answering = asyncio.current_task()
        assert answering is not None
        stopped_by_watcher = False

        def client_left() -> None:
            nonlocal stopped_by_watcher
            # Only while the answer runs: a watcher that finished just as the answer did must not cancel
            # whatever this task does next.
            if not done:
                stopped_by_watcher = True
                ctx.result = OUTCOME_CLIENT_GONE
                answering.cancel()

        def watcher_done(watcher: asyncio.Future[None]) -> None:
            if not watcher.cancelled():
                client_left()

        done = False
        gone: asyncio.Future[None] | None = None
        if hook is not None:
            hook.callback = client_left
        else:
            gone = asyncio.ensure_future(wait_disconnect(receive))
            gone.add_done_callback(watcher_done)
        try:
            await self._answer(ctx, send)
        except asyncio.CancelledError:
            if not stopped_by_watcher or answering.uncancel() > 0:
                ctx.result = OUTCOME_CLIENT_GONE  # the server is shutting down
                raise
        finally:
            done = True
            if hook is not None:
                hook.callback = None
            if gone is not None:
                gone.cancel()

    async def _answer(self, ctx: RequestContext, send: Send) -> None:
        try:
            reply = await self._pipeline.run(ctx)
            await relay(reply, send, ctx)
        except OSError:  # the ASGI server reports a vanished client on send
            ctx.result = OUTCOME_CLIENT_GONE
        except Exception as exc:
            logger.exception("request_id=%s failed unexpectedly", ctx.request_id)
            if ctx.status is None:  # nothing sent yet: a generic JSON error, never a traceback
                with contextlib.suppress(Exception):
                    await relay(error_json(exc), send, ctx)
        finally:
            for cleanup in reversed(ctx.cleanups):
                try:
                    cleanup()
                except Exception:
                    logger.exception("cleanup failed for request_id=%s", ctx.request_id)

    async def _models(self, send: Send) -> None:
        listing = await self._catalog.listing()
        if listing is None:
            message = "No model server answered /v1/models."
            await send_bytes(send, 503, error_body(503, message, "no_endpoint", "service_unavailable"))
        else:
            await send_json(send, 200, listing)

    async def _healthz(self, send: Send) -> None:
        schedulable = len(self._datastore.schedulable())
        total = len(self._datastore.endpoints())
        extra = self._health() if self._health is not None else {}
        body = {"status": "ok", "endpoints": total, "schedulable_endpoints": schedulable, **extra}
        await send_json(send, 200, body)


async def _method_not_allowed(send: Send, method: str, allowed: frozenset[str]) -> None:
    allow = ", ".join(sorted(allowed))
    body = error_body(405, f"Method {method} not allowed; use {allow}.", "method_not_allowed")
    await send_bytes(send, 405, body, extra=[(b"allow", allow.encode())])
