"""The gateway's ASGI app: the OpenAI routes through the pipeline, plus /v1/models, /metrics and /healthz.

Every answer the gateway makes itself is OpenAI-style JSON with a 4xx/5xx status, never a traceback. A client
that disconnects cancels its request: the upstream connection is closed and the pod's in-flight count freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from epp.datastore import Datastore
from epp.model_catalog import ModelCatalog
from epp.request import INFERENCE_PATHS
from gateway.asgi import (
    BodyTooLarge,
    ClientGone,
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

MODELS_PATH = "/v1/models"


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
        max_body_bytes: int,
    ) -> None:
        self._pipeline = pipeline
        self._catalog = catalog
        self._datastore = datastore
        self._metrics = metrics
        self._recorder = recorder
        self._registry = registry
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # served with lifespan off; websockets are not part of the API
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path in INFERENCE_PATHS:
            if method == "POST":
                await self._proxy(path, scope, receive, send)
            else:
                await _method_not_allowed(send, method, "POST")
        elif path in (MODELS_PATH, "/metrics", "/healthz"):
            if method != "GET":
                await _method_not_allowed(send, method, "GET")
            elif path == MODELS_PATH:
                await self._models(send)
            elif path == "/metrics":
                body = generate_latest(self._registry)
                await send_bytes(send, 200, body, CONTENT_TYPE_LATEST.encode())
            else:
                await self._healthz(send)
        else:
            await send_bytes(send, 404, error_body(404, f"Route {path} not found.", "not_found"))

    async def _proxy(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = lowered_headers(scope)
        headers.setdefault("x-request-id", uuid.uuid4().hex)
        ctx = RequestContext(path, headers, b"")
        self._metrics.in_flight.inc()
        try:
            try:
                ctx.body = await read_body(receive, headers, self._max_body_bytes)
            except BodyTooLarge:
                ctx.result = OUTCOME_REFUSED
                message = f"Request body exceeds {self._max_body_bytes} bytes."
                reply = BytesReply(413, error_body(413, message, "body_too_large"))
                await relay(reply, send, ctx)
                return
            except ClientGone:
                ctx.result = OUTCOME_CLIENT_GONE
                return
            await self._answer_until_disconnect(ctx, receive, send)
        finally:
            self._metrics.in_flight.dec()
            self._recorder.record(ctx, time.perf_counter() - ctx.started)

    async def _answer_until_disconnect(self, ctx: RequestContext, receive: Receive, send: Send) -> None:
        """Answer in this task; a watcher cancels it if the client leaves (one task, not two and a wait)."""
        answering = asyncio.current_task()
        assert answering is not None
        stopped_by_watcher = False

        def client_left(watcher: asyncio.Future[None]) -> None:
            nonlocal stopped_by_watcher
            # Only while the answer runs: a watcher that finished just as the answer did must not cancel
            # whatever this task does next.
            if not watcher.cancelled() and not done:
                stopped_by_watcher = True
                ctx.result = OUTCOME_CLIENT_GONE
                answering.cancel()

        done = False
        gone = asyncio.ensure_future(wait_disconnect(receive))
        gone.add_done_callback(client_left)
        try:
            await self._answer(ctx, send)
        except asyncio.CancelledError:
            if not stopped_by_watcher or answering.uncancel() > 0:
                ctx.result = OUTCOME_CLIENT_GONE  # the server is shutting down
                raise
        finally:
            done = True
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
                    await cleanup()
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
        await send_json(send, 200, {"status": "ok", "endpoints": total, "schedulable_endpoints": schedulable})


async def _method_not_allowed(send: Send, method: str, allowed: str) -> None:
    body = error_body(405, f"Method {method} not allowed; use {allowed}.", "method_not_allowed")
    await send_bytes(send, 405, body)
