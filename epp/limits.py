"""Limits on what a client may send, shared by both data planes so they answer the same way.

The gateway enforces them itself; `epp envoy config` renders them into Envoy's listener, and the ext_proc
server uses the same body limit. Each has a flag on `epp gateway` / `epp serve` / `epp envoy config`; the
table in docs/gateway.md and docs/envoy.md lists them with their defaults.
"""

from __future__ import annotations

MIB = 1024 * 1024

DEFAULT_MAX_BODY_BYTES = 10 * MIB  # one request body; beyond it: 413 JSON
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # all request headers together; beyond it: 431
DEFAULT_MAX_HEADERS = 100  # request header count; beyond it: 431
DEFAULT_HEADER_TIMEOUT_S = 10.0  # a client must finish sending its headers within this
DEFAULT_BODY_TIMEOUT_S = 30.0  # ... and its body within this after the headers
DEFAULT_IDLE_TIMEOUT_S = 60.0  # a keep-alive connection with no request open is closed after this
# Request body bytes held at once; beyond it: 503 + Retry-After. A request in the gateway costs about four
# times its body in memory while it is handled (the bytes, the parsed JSON, the prompt text, the upstream
# copy: measured 39 MB per 10 MiB chat body), so 64 MiB of bodies is about 256 MiB of RSS.
DEFAULT_MAX_BUFFERED_BODY_BYTES = 64 * MIB
