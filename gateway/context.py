"""What one proxied request carries through the pipeline, and what a stage answers with."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from epp.datastore import Endpoint
from epp.picking import error_reply
from epp.request import ParsedRequest
from epp.requestcontrol.lifecycle import RequestLifecycle
from gateway.asgi import JSON, Headers

if TYPE_CHECKING:
    from gateway.provider_attempts import ProviderAttempts

# Values of RequestContext.result (the `result` label and access log field).
OUTCOME_OK = "ok"
OUTCOME_REFUSED = "refused"  # the gateway answered with its own error before reaching a pod
OUTCOME_UPSTREAM_FAILED = "upstream_failed"  # no pod could be reached
OUTCOME_UPSTREAM_ABORTED = "upstream_aborted"  # the pod broke off mid-response
OUTCOME_CLIENT_GONE = "client_disconnected"
OUTCOME_POD_4XX = "pod_4xx"  # a pod answered 4xx: relayed unchanged, but not a success
OUTCOME_POD_5XX = "pod_5xx"  # a pod's 5xx relayed because no other pod was left to try


class Reply(Protocol):
    """A response a stage hands back: status and headers, then the body in chunks."""

    status: int
    headers: Headers

    def chunks(self) -> AsyncIterator[bytes]: ...

    @property
    def last_chunk(self) -> bool:
        """True when the chunk `chunks()` just yielded is known to be the body's last (the relay then ends
        the response with it, one ASGI send fewer); False when unknown."""
        ...


@dataclass(slots=True)
class BytesReply:
    """A whole response held in memory (the gateway's own answers, errors included)."""

    status: int
    body: bytes
    headers: Headers = field(default_factory=lambda: [(b"content-type", JSON)])

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    @property
    def last_chunk(self) -> bool:
        return True


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
    started: float = field(default_factory=time.perf_counter)  # arrival: TTFT and total time start here
    parsed: ParsedRequest | None = None  # parse
    parsed_at: float | None = None  # parse: when parsing began (decision latency starts here)
    stream: bool = False  # parse: the client asked for SSE
    lifecycle: RequestLifecycle | None = None  # schedule: owns attempts, in-flight counts and outcomes
    provider: ProviderAttempts | None = None  # providers: a request sent to an LLM provider instead
    status: int | None = None  # the status sent to the client
    result: str = OUTCOME_OK
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run when the reply ends
    reply_hooks: list[Callable[[Reply], Reply]] = field(default_factory=list)  # wrap the final reply
    cache_status: str = "-"  # cache: hit-exact | hit-semantic | miss | bypass ("-": not selected)

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "-")  # the app sets one when the client did not

    def final_result(self, status: int) -> str:
        """`result` as recorded: a pod's 4xx/5xx relayed to the client is not `ok`."""
        attempts = self.lifecycle or self.provider
        if self.result != OUTCOME_OK or attempts is None or not attempts.attempts:
            return self.result
        if 400 <= status < 500:
            return OUTCOME_POD_4XX
        if status >= 500:
            return OUTCOME_POD_5XX
        return self.result

    @property
    def endpoint(self) -> Endpoint | None:
        """The pod that answered (or the last one tried)."""
        return self.lifecycle.endpoint if self.lifecycle is not None else None

    @property
    def upstream_body(self) -> bytes:
        parsed = self.parsed
        if parsed is not None and parsed.rewritten_body is not None:
            return parsed.rewritten_body
        return self.body
