"""Apply a provider's openAIConfig to an OpenAI-style JSON request body."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from epp.config.traffic.documents import OpenAIConfig


class BodyError(ValueError):
    """The request body is not a JSON object (the caller answers 400)."""


class RewrittenBody(NamedTuple):
    body: bytes
    # True when the client itself asked for the usage chunk (stream_options.include_usage); when False and
    # the body streams, epp added the option for its own accounting and the caller strips that chunk.
    client_asked_usage: bool
    stream: bool  # whether the upstream request streams


def rewrite_body(body: bytes, cfg: OpenAIConfig, *, keep_client_model: bool = False) -> RewrittenBody:
    """Set `model` (unless keep_client_model and the client named one) and `stream` from `cfg`.

    A streaming request gets `stream_options.include_usage = true`; a non-streaming one loses any
    `stream_options` (OpenAI rejects them without `stream`). A body without `model` is valid. The body
    is returned unchanged (same bytes) when nothing needs to change.
    """
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BodyError("request body must be a JSON object")
    changed = False
    if (
        cfg.model is not None
        and not (keep_client_model and "model" in data)
        and data.get("model") != cfg.model
    ):
        data["model"] = cfg.model
        changed = True
    if cfg.stream is not None and data.get("stream") is not cfg.stream:
        data["stream"] = cfg.stream
        changed = True
    stream = data.get("stream") is True
    options = data.get("stream_options")
    asked = stream and isinstance(options, dict) and options.get("include_usage") is True
    if stream and not asked:
        data["stream_options"] = (
            {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
        )
        changed = True
    elif not stream and "stream_options" in data:
        del data["stream_options"]
        changed = True
    return RewrittenBody(orjson.dumps(data) if changed else body, asked, stream)
