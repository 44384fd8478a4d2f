"""Parse an OpenAI request (body bytes + headers + path) into the `LLMRequest` the scheduler sees.

Prompt text used for prefix matching:
- chat (`messages`): each message becomes `"<|{role}|>\\n{content}\\n"`, concatenated in order, so round N+1
  of a conversation starts with exactly round N's text. `content` may be a string, null (e.g. an assistant
  message with tool calls: empty text) or a list of parts: a text part contributes its `text`, any other
  part its JSON with sorted keys (so two different images differ); parts are joined with `"\\n"`.
- completions (`prompt`): a string; a list of strings joined with `"\\n"`; token ids (a list of ints, or a
  list of such lists) are accepted and become their decimal ids joined by spaces (lists joined by `"\\n"`).
Which of the two is decided by the path (`/v1/chat/completions`, `/v1/completions`); on any other path by
the body (`messages` wins over `prompt`).

Criticality comes only from the InferenceModel (default Standard): like GIE, no header overrides it.
The optional `cache_salt` (vLLM's: no KV cache is shared across salts) is kept for prefix matching.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Container, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from epp.scheduling.types import Criticality, LLMRequest

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
INFERENCE_PATHS = frozenset({CHAT_PATH, COMPLETIONS_PATH})

# Never carried into LLMRequest.headers (which plugins see and debug logs may print).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"})


class RequestError(Exception):
    """A request epp refuses; rendered as an OpenAI-style error with HTTP `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_


class InferenceModelSpec(Protocol):
    @property
    def criticality(self) -> Criticality | str | None: ...


class ModelResolver(Protocol):
    """InferenceModels by name (epp.config's ModelRegistry satisfies this)."""

    def lookup(self, model_name: str) -> InferenceModelSpec | None: ...

    def choose_target(self, model_name: str, rng: random.Random) -> str: ...


@dataclass(slots=True)
class ParsedRequest:
    request: LLMRequest
    rewritten_body: bytes | None  # the body to send upstream when the model was rewritten, else None


def parse_request(
    body: bytes,
    headers: Mapping[str, str],
    path: str,
    resolver: ModelResolver | None,
    rng: random.Random,
    known_adapters: Container[str] = frozenset(),
) -> ParsedRequest:
    """Parse and resolve one request; raises RequestError (400 bad body, 404 unknown model).

    `headers` must have lower-case names. `resolver=None` (or an empty one, if it is Sized) means no
    InferenceModels are configured: every model passes through unchanged.
    `known_adapters` are LoRA adapter names seen on the pods.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError(400, "Request body must be a JSON object.", code="invalid_body")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "`model` is required and must be a non-empty string.", param="model")

    prompt = _prompt_text(data, path.split("?", 1)[0])
    cache_salt = data.get("cache_salt")
    if cache_salt is not None and (not isinstance(cache_salt, str) or not cache_salt):
        raise RequestError(400, "`cache_salt` must be a non-empty string if provided.", param="cache_salt")
    target, criticality = _resolve(model, resolver, rng)
    rewritten = None
    if target != model:
        data["model"] = target
        rewritten = orjson.dumps(data)
    lora = target if target in known_adapters else None  # adapters: from the pods, never from a rename
    request = LLMRequest(
        request_id=request_id_from(headers),
        model=model,
        target_model=target,
        prompt=prompt,
        criticality=criticality,
        headers=public_headers(headers),
        body=data,
        lora_adapter=lora,
        cache_salt=cache_salt,
    )
    return ParsedRequest(request, rewritten)


def bodyless_request(headers: Mapping[str, str]) -> LLMRequest:
    """A request without a body (e.g. GET /v1/models): no model, empty prompt; any endpoint will do."""
    return LLMRequest(
        request_id=request_id_from(headers),
        model="",
        target_model="",
        prompt="",
        headers=public_headers(headers),
    )


MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID_RE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}")


def request_id_from(headers: Mapping[str, str]) -> str:
    """The client's `x-request-id` if it is safe to log, else a fresh one.

    Only `[A-Za-z0-9._:-]`, at most MAX_REQUEST_ID_CHARS: an id with spaces, `=` or control characters could
    forge fields or lines in the access log. Both data planes use this, so they agree on the id.
    """
    given = headers.get("x-request-id")
    if given is not None and _REQUEST_ID_RE.fullmatch(given):
        return given
    return _new_request_id()


def _new_request_id() -> str:
    """A random UUID version 4 in hex, as `uuid.uuid4().hex` makes it, at a third of its cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def stream_flag(body: Mapping[str, Any]) -> bool:
    """The request's `stream`: absent or null (OpenAI allows both) is false; not a boolean: 400."""
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise RequestError(400, "`stream` must be a boolean.", param="stream")
    return stream


def public_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in SECRET_HEADERS}


def _resolve(model: str, resolver: ModelResolver | None, rng: random.Random) -> tuple[str, Criticality]:
    if resolver is None or (isinstance(resolver, Sized) and len(resolver) == 0):
        return model, Criticality.STANDARD
    spec = resolver.lookup(model)
    if spec is None:
        raise RequestError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
    crit = spec.criticality
    if crit is None:
        criticality = Criticality.STANDARD
    elif isinstance(crit, Criticality):
        criticality = crit
    else:
        criticality = Criticality(crit)
    return resolver.choose_target(model, rng), criticality


def _prompt_text(data: dict[str, Any], path: str) -> str:
    if path == CHAT_PATH:
        return flatten_messages(data.get("messages"))
    if path == COMPLETIONS_PATH:
        return completion_prompt(data.get("prompt"))
    if "messages" in data:
        return flatten_messages(data["messages"])
    if "prompt" in data:
        return completion_prompt(data["prompt"])
    raise RequestError(400, "Either `messages` or `prompt` is required.", param="messages")


def flatten_messages(messages: object) -> str:
    """Chat messages as one prefix-stable string (see the module docstring for the exact form)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` is required and must be a non-empty array.", param="messages")
    out: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RequestError(400, f"`messages[{i}]` must be an object.", param="messages")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise RequestError(400, f"`messages[{i}].role` must be a non-empty string.", param="messages")
        out.append(f"<|{role}|>\n{_content_text(msg.get('content'), i)}\n")
    return "".join(out)


def _content_text(content: object, i: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise RequestError(
            400, f"`messages[{i}].content` must be a string or an array of parts.", param="messages"
        )
    parts: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            raise RequestError(400, f"`messages[{i}].content` parts must be objects.", param="messages")
        if part.get("type") == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(
                    400, f"`messages[{i}].content` text part needs a `text` string.", "messages"
                )
            parts.append(text)
        else:
            parts.append(orjson.dumps(part, option=orjson.OPT_SORT_KEYS).decode())
    return "\n".join(parts)


def completion_prompt(prompt: object) -> str:
    """A completions `prompt` as text (see the module docstring for lists and token ids)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        if _is_token_ids(prompt):
            return " ".join(map(str, prompt))
        if all(isinstance(p, list) and p and _is_token_ids(p) for p in prompt):
            return "\n".join(" ".join(map(str, p)) for p in prompt)
    raise RequestError(
        400,
        "`prompt` is required and must be a string, an array of strings or an array of token ids.",
        param="prompt",
    )


def _is_token_ids(items: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in items)
