"""What one proxied request carries through the pipeline, and what a stage answers with."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from epp.datastore import Endpoint
from epp.picking import PickOutcome, error_reply
from epp.scheduling.types import LLMRequest
from gateway.asgi import JSON, Headers

# Values of RequestContext.outcome besides "ok".
OUTCOME_OK = "ok"
OUTCOME_REFUSED = "refused"  # the gateway answered with its own error before reaching a pod
OUTCOME_UPSTREAM_FAILED = "upstream_failed"  # no pod could be reached
OUTCOME_UPSTREAM_ABORTED = "upstream_aborted"  # the pod broke off mid-response
OUTCOME_CLIENT_GONE = "client_disconnected"


class Reply(Protocol):
    """A response a stage hands back: status and headers, then the body in chunks."""

    status: int
    headers: Headers

    def chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(slots=True)
class BytesReply:
    """A whole response held in memory (the gateway's own answers, errors included)."""

    status: int
    body: bytes
    headers: Headers = field(default_factory=lambda: [(b"content-type", JSON)])

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body


def error_json(exc: BaseException) -> BytesReply:
    """The OpenAI-style JSON error for `exc` (anything unexpected: a generic 503 that leaks nothing)."""
    reply = error_reply(exc)
    return BytesReply(reply.status, reply.body)


@dataclass(slots=True)
class RequestContext:
    """Per-request state; each stage reads what earlier stages wrote and adds its own part."""

    path: str  # e.g. /v1/chat/completions
    headers: dict[str, str]  # lower-case names; secrets included (forwarded upstream, never logged)
    body: bytes
    started: float = field(default_factory=time.perf_counter)
    request: LLMRequest | None = None  # parse
    rewritten_body: bytes | None = None  # parse: set when an InferenceModel rewrote `model`
    stream: bool = False  # parse: the client asked for SSE
    outcome: PickOutcome | None = None  # schedule
    endpoint: Endpoint | None = None  # forward: the pod that answered (or the last one tried)
    attempts: int = 0  # forward: pods tried
    failed: list[str] = field(default_factory=list)  # forward: pods that failed before answering
    status: int | None = None  # the status sent to the client
    first_byte_s: float | None = None  # seconds from `started` to the first response body byte
    result: str = OUTCOME_OK
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run when the reply ends

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "-")  # the app sets one when the client did not

    @property
    def upstream_body(self) -> bytes:
        return self.rewritten_body if self.rewritten_body is not None else self.body

    def mark_first_byte(self) -> None:
        if self.first_byte_s is None:
            self.first_byte_s = time.perf_counter() - self.started
