"""Validation of OpenAI completion/chat request bodies and vLLM-shaped error bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from epp.tokenization.simulated import content_text, render_chat


class ApiError(Exception):
    """A client error answered as `{"error": {...}}` with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(self.status, "APIError")
        err = {"message": self.message, "type": kind, "param": self.param, "code": self.status}
        return orjson.dumps({"error": err})


@dataclass(frozen=True)
class GenerationParams:
    """What a request asks for once validated."""

    chat: bool
    model: str | None
    prompt_text: str | None
    prompt_ids: list[int] | None
    max_tokens: int | None
    stream: bool
    include_usage: bool
    ignore_eos: bool
    cache_salt: str | None = None


def _load(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    return body


def _opt_positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"{name} must be a positive integer, got {value!r}.", name)
    return value


def _common(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string.", "model")
    stream = body.get("stream")
    if stream is None:  # null is the API's default, as vLLM reads it
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object.", "stream_options")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "Only n=1 is supported by the simulator.", "n")
    cache_salt = body.get("cache_salt")
    if cache_salt is not None and (not isinstance(cache_salt, str) or not cache_salt):
        raise ApiError(400, "Parameter 'cache_salt' must be a non-empty string if provided.", "cache_salt")
    max_tokens = _opt_positive_int(body, "max_tokens")
    if chat and max_tokens is None:
        max_tokens = _opt_positive_int(body, "max_completion_tokens")
    return {
        "model": model,
        "stream": stream,
        "include_usage": bool(options and options.get("include_usage")),
        "max_tokens": max_tokens,
        "ignore_eos": bool(body.get("ignore_eos", False)),
        "cache_salt": cache_salt,
    }


def parse_completion(raw: bytes) -> GenerationParams:
    """Validate a /v1/completions body."""
    body = _load(raw)
    prompt = body.get("prompt")
    text: str | None = None
    ids: list[int] | None = None
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        ids = prompt
    else:
        raise ApiError(400, "prompt must be a non-empty string or a list of token ids.", "prompt")
    return GenerationParams(chat=False, prompt_text=text, prompt_ids=ids, **_common(body, chat=False))


def _content_text(content: Any, index: int) -> str:
    text = content_text(content)
    if text is not None:
        return text
    if isinstance(content, list):
        raise ApiError(400, f"messages[{index}].content parts must be text parts.", "messages")
    raise ApiError(400, f"messages[{index}].content must be a string or a list of parts.", "messages")


def parse_chat(raw: bytes) -> GenerationParams:
    """Validate a /v1/chat/completions body and render its messages."""
    body = _load(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list.", "messages")
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string role.", "messages")
        turns.append((msg["role"], _content_text(msg.get("content"), i)))
    text = render_chat(turns)
    return GenerationParams(chat=True, prompt_text=text, prompt_ids=None, **_common(body, chat=True))
