"""The gateway's HTTP/1.1 edge: uvicorn's httptools protocol plus the limits it lacks.

uvicorn's httptools protocol bounds neither the request head (a 64 MiB header was buffered whole) nor the time
a client may take to send it, and a keep-alive connection that never sent a request stays open for good. This
subclass adds, per connection:

- head size and field count (431; a request target longer than the whole head limit: 414). httptools
  buffers a header until its end, so the raw bytes fed while the head is incomplete are counted too: memory
  stays within the limit plus one socket read.
- head timeout: from the connection's first byte (or its opening) to the end of the head; then 408 and close
  (a connection that sent nothing is just closed).
- body timeout backstop: the app answers a slow body with 408 itself (gateway/asgi.py read_body); a body
  still trickling in once the answer went out closes the connection at the same deadline.
- idle keep-alive timeout: uvicorn's, also re-armed when a body ends after its answer (uvicorn leaves such
  a connection without a timer).
- HTTP/1.1 without exactly one Host: 400; a Transfer-Encoding other than `chunked`: 501.

Every refusal is an OpenAI-style JSON error sent with `connection: close`; the connection is then half-closed
and what the client still sends is dropped for LINGER_S, so the client reads the refusal instead of a reset.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from epp import limits
from gateway.asgi import BODY_BUFFERED, DISCONNECT_HOOK, DisconnectHook, error_body

LINGER_S = 1.0  # after a refusal, how long what the client still sends is read and dropped


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_header_bytes: int = limits.DEFAULT_MAX_HEADER_BYTES
    max_headers: int = limits.DEFAULT_MAX_HEADERS
    header_timeout_s: float = limits.DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = limits.DEFAULT_BODY_TIMEOUT_S
    idle_timeout_s: float = limits.DEFAULT_IDLE_TIMEOUT_S


class Refusal(Exception):
    """Raised from a parser callback: the request is answered with this error and the connection closed."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def edge_protocol(edge_limits: EdgeLimits) -> type[EdgeProtocol]:
    """A protocol class bound to `edge_limits` (uvicorn builds protocols from a class, not an instance)."""
    return type("BoundEdgeProtocol", (EdgeProtocol,), {"limits": edge_limits})


class EdgeProtocol(HttpToolsProtocol):
    limits: ClassVar[EdgeLimits] = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.idle_timeout_s  # type: ignore[assignment]
        self._in_head = True  # waiting for (the rest of) a request head
        self._raw_head_bytes = 0  # bytes fed while the head was incomplete (may include a body's tail)
        self._head_bytes = 0  # exact: request target plus header lines
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_deadline: float | None = None  # a head's first byte came (loop time + head timeout)
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_deadline: float | None = None  # a head is complete and its body is not (loop time)
        self._body_overdue = False
        self._refusal: Refusal | None = None
        self._refused = False
        self._hooks: list[tuple[RequestResponseCycle, DisconnectHook]] = []  # of answers not yet complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a client that connects and sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)
        hooks, self._hooks = self._hooks, []
        for cycle, hook in hooks:
            if hook.callback is not None and not cycle.response_complete:
                callback, hook.callback = hook.callback, None
                callback()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the refusal is on its way out; the rest is dropped
        if self._in_head:
            if self._head_timer is None and self._head_deadline is None:
                # Timed from this first byte; the timer itself is armed only if the head is still incomplete
                # once this read is parsed (a head in one read, the usual case, costs no timer).
                self._head_deadline = self.loop.time() + self.limits.header_timeout_s
            self._raw_head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._arm_body_timer()
            self._upgrade()
            return
        except httptools.HttpParserError:  # callback refusals included (httptools wraps them)
            refusal = self._refusal or Refusal(400, "Invalid HTTP request.", "invalid_http")
            self.logger.debug("refused a request: %s", refusal.message)
            self._refuse(refusal)
            return
        if self._in_head and self._raw_head_bytes > self.limits.max_header_bytes:
            self._refuse(_too_large_head(self.limits))
            return
        self._arm_body_timer()

    def _upgrade(self) -> None:
        # As uvicorn does; the gateway serves no websockets, so this only logs.
        if self._should_upgrade():
            self.handle_websocket_upgrade()
        else:
            self._unsupported_upgrade_warning()

    def send_400_response(self, msg: str) -> None:
        self._refuse(Refusal(400, "Invalid HTTP request.", "invalid_http"))

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_header_bytes:
            raise self._refusing(Refusal(414, "Request target too long.", "uri_too_long"))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        self._header_count += 1
        if self._head_bytes > self.limits.max_header_bytes:
            raise self._refusing(_too_large_head(self.limits))
        if self._header_count > self.limits.max_headers:
            message = f"More than {self.limits.max_headers} request headers."
            raise self._refusing(Refusal(431, message, "too_many_headers"))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_head = False
        self._raw_head_bytes = 0
        self._check_framing()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:
            # Pipelined requests keep their hooks until their answers are complete.
            self._hooks = [(c, h) for c, h in self._hooks if not c.response_complete]
            hook = DisconnectHook()
            cast(dict[str, Any], cycle.scope)[DISCONNECT_HOOK] = hook
            self._hooks.append((cycle, hook))
        self._body_overdue = False
        # The timer is armed after this read is parsed, and only if the body is still incomplete by then: a
        # request that came in one read (most do) costs no timer.
        self._body_deadline = self.loop.time() + self.limits.body_timeout_s

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_deadline = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.more_body:
            scope = cast(dict[str, Any], cycle.scope)  # uvicorn's HTTPScope type lists the ASGI keys only
            scope[BODY_BUFFERED] = True  # the app's first receive() returns the body whole, without waiting
        self._in_head = True
        self._raw_head_bytes = 0
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # The answer went out before the body ended; data_received dropped uvicorn's idle timer.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._body_overdue and not self.transport.is_closing():
            self.transport.close()

    # Checks and refusals

    def _check_framing(self) -> None:
        hosts = 0
        codings: list[bytes] = []
        for name, value in self.headers:
            if name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        if hosts > 1 or (hosts == 0 and self.parser.get_http_version() == "1.1"):
            message = "An HTTP/1.1 request needs exactly one Host header."
            raise self._refusing(Refusal(400, message, "invalid_host"))
        if codings and codings != [b"chunked"]:
            coding = b", ".join(codings).decode("latin-1")
            message = f"Transfer-Encoding `{coding}` is not supported; only `chunked` is."
            raise self._refusing(Refusal(501, message, "unsupported_transfer_encoding"))

    def _refusing(self, refusal: Refusal) -> Refusal:
        self._refusal = refusal  # httptools wraps callback exceptions; data_received reads it back
        return refusal

    def _refuse(self, refusal: Refusal) -> None:
        self._refused = True
        self._cancel_timers()
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            self.transport.close()  # mid-answer (a pipelined request went wrong): no second status line
            return
        type_ = "api_error" if refusal.status >= 500 else "invalid_request_error"
        body = error_body(refusal.status, refusal.message, refusal.code, type_)
        head = [
            STATUS_LINE[refusal.status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._linger()

    def _linger(self) -> None:
        """Half-close, drop what the client still sends for a moment, then close.

        Closing with unread bytes in the socket's buffer sends a reset, which can destroy the refusal
        before the client reads it (the client is usually still sending the head or body we refused).
        """
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)

    # Timers

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._on_head_timeout)

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._arm_head_timer()  # a pipelined head while an answer streams: wait for the answer
            return
        if self._raw_head_bytes == 0:
            self._refused = True
            self.transport.close()  # nothing was sent: nothing to answer
            return
        message = f"Request headers not received within {self.limits.header_timeout_s:g} s."
        self._refuse(Refusal(408, message, "header_timeout"))

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        self._body_deadline = None
        self._body_overdue = True
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.transport.is_closing():
            self.transport.close()
        # Otherwise the app's own body timeout answers 408, or on_response_complete closes.

    def _arm_body_timer(self) -> None:
        """After a read: time the head still incomplete, and the body whose head came complete and whose end
        has not come yet."""
        deadline = self._body_deadline
        if deadline is not None and self._body_timer is None:
            self._body_timer = self.loop.call_at(deadline, self._on_body_timeout)
        deadline = self._head_deadline
        if deadline is not None and self._in_head and self._head_timer is None:
            self._head_timer = self.loop.call_at(deadline, self._on_head_timeout)

    def _cancel_head_timer(self) -> None:
        self._head_deadline = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._body_deadline = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def _too_large_head(edge_limits: EdgeLimits) -> Refusal:
    message = f"Request headers exceed {edge_limits.max_header_bytes} bytes."
    return Refusal(431, message, "headers_too_large")
