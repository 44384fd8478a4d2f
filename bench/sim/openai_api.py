"""OpenAI-compatible /v1/completions and /v1/chat/completions of a simulated pod (JSON and SSE)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from bench.sim.asgi import Receive, Send, send_response, wait_disconnect
from bench.sim.engine import TokenOutput
from bench.sim.pod import RequestStream, SimPod
from bench.sim.protocol import ApiError, GenerationParams


def _usage(pod: SimPod, stream: RequestStream, *, full: bool) -> dict[str, Any]:
    """vLLM's UsageInfo. `full` is the JSON body's model_dump (every field); a stream chunk has the set ones.

    `prompt_tokens_details` is null unless --enable-prompt-tokens-details.
    """
    req = stream.request
    usage: dict[str, Any] = {
        "prompt_tokens": req.num_prompt,
        "total_tokens": req.num_prompt + req.num_output,
        "completion_tokens": req.num_output,
    }
    details: dict[str, Any] | None = None
    if pod.enable_prompt_tokens_details:
        details = {"cached_tokens": req.num_cached_tokens}
        if full:
            details |= {"created_cache_tokens": None, "multimodal_tokens": None}
    if full:
        usage |= {"prompt_tokens_details": details, "completion_tokens_details": None}
    elif details is not None:
        usage["prompt_tokens_details"] = details
    return usage


def _message(text: str) -> dict[str, Any]:
    """vLLM 0.32's ChatMessage of a plain (no tools, no reasoning) answer."""
    return {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [],
        "reasoning": None,
    }


def _chunk_choice(stream: RequestStream, text: str | None, finish: str | None) -> dict[str, Any]:
    """A streamed choice with the fields vLLM sets (it serialises chunks with exclude_unset)."""
    if stream.params.chat:
        delta: dict[str, Any] = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = None  # null: no stop string or stop token ended it
        choice["token_ids"] = None
        return choice
    return {
        "index": 0,
        "text": text or "",
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": None,
        "prompt_token_ids": None,
        "token_ids": None,
    }


def _envelope(stream: RequestStream, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
    if stream.params.chat:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
    else:
        kind = "text_completion"
    return {
        "id": stream.request.request_id,
        "object": kind,
        "created": stream.created,
        "model": stream.model,
        "choices": choices,
    }


def _sse(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "http.response.body",
        "body": b"data: " + orjson.dumps(payload) + b"\n\n",
        "more_body": True,
    }


async def _next_token(stream: RequestStream, gone: asyncio.Task[None]) -> TokenOutput | None:
    """The next token; None at the end of the stream or when the client left."""
    if not stream.queue.empty():
        return stream.queue.get_nowait()
    getter = asyncio.ensure_future(stream.queue.get())
    await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not getter.done():
        getter.cancel()
        return None
    return getter.result()


def _check_finished(stream: RequestStream) -> str:
    reason = stream.request.finish_reason
    if reason not in ("stop", "length"):
        raise ApiError(503, "The request was aborted by the engine (simulated pod restart).")
    return reason


async def _respond_json(pod: SimPod, stream: RequestStream, send: Send, gone: asyncio.Task[None]) -> None:
    count = 0
    while await _next_token(stream, gone) is not None:
        count += 1
    if gone.done():
        pod.abort(stream)
        return
    reason = _check_finished(stream)
    text = "".join(stream.token_text(i) for i in range(count))
    choice: dict[str, Any] = {"index": 0}
    if stream.params.chat:
        choice["message"] = _message(text)
    else:
        choice["text"] = text
    choice |= {"logprobs": None, "finish_reason": reason, "stop_reason": None, "token_ids": None}
    if not stream.params.chat:
        choice |= {"prompt_logprobs": None, "prompt_token_ids": None}
    choice["routed_experts"] = None
    # The fields of vLLM 0.32's ChatCompletionResponse / CompletionResponse, in order (a full model_dump).
    body = _envelope(stream, [choice], chunk=False) | {
        "service_tier": None,
        "system_fingerprint": pod.system_fingerprint,
        "usage": _usage(pod, stream, full=True),
    }
    if stream.params.chat:
        body |= {"prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None}
    body |= {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}
    await send_response(send, 200, orjson.dumps(body))


async def _respond_sse(pod: SimPod, stream: RequestStream, send: Send, gone: asyncio.Task[None]) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    token = await _next_token(stream, gone)
    if stream.params.chat and token is not None:
        # vLLM sends the role-only chunk when the engine's first output arrives, not before any work,
        # so the first body byte comes at the true time to first token.
        first = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        role_chunk = _envelope(stream, [first], chunk=True) | {"prompt_token_ids": None, "prompt_text": None}
        await send(_sse(role_chunk))
    count = 0
    while token is not None:
        finished = stream.request.finish_reason in ("stop", "length") and stream.queue.qsize() <= 1
        choice = _chunk_choice(
            stream, stream.token_text(count), stream.request.finish_reason if finished else None
        )
        count += 1
        payload = _envelope(stream, [choice], chunk=True)
        if finished and not stream.params.include_usage:
            payload["system_fingerprint"] = pod.system_fingerprint  # vLLM stamps the terminal chunk only
        await send(_sse(payload))
        token = await _next_token(stream, gone)
    if gone.done():
        pod.abort(stream)
        return
    if stream.request.finish_reason in ("stop", "length"):
        if stream.params.include_usage:
            await send(
                _sse(
                    _envelope(stream, [], chunk=True)
                    | {"usage": _usage(pod, stream, full=False), "system_fingerprint": pod.system_fingerprint}
                )
            )
    else:
        err = {"message": "request aborted by the engine", "type": "APIError", "param": None, "code": 503}
        await send(_sse({"error": err}))
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def serve_generation(pod: SimPod, params: GenerationParams, receive: Receive, send: Send) -> None:
    """Run one validated request on `pod` and answer it; aborts the request if the client goes away."""
    stream = pod.submit(params)
    gone = asyncio.ensure_future(wait_disconnect(receive))
    try:
        if params.stream:
            await _respond_sse(pod, stream, send, gone)
        else:
            await _respond_json(pod, stream, send, gone)
    finally:
        pod.abort(stream)
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
