"""epp.cache.replay: a hit as JSON or SSE, read back by the official openai SDK (its own SSE parser)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2 as httpx  # the HTTP client the openai SDK is built on
import openai
import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from epp.cache.answers import StreamAssembler
from epp.cache.replay import replay_json, replay_sse, split_text
from epp.cache.types import CacheHit, StoredAnswer

USAGE = {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}
CONTENT = "Redis is an in-memory data store. " * 7 + "Ünïcödé ✓ 🌍\n\nLast line.\r\n"
CALL = {
    "id": "call_9",
    "type": "function",
    "function": {"name": "lookup", "arguments": '{"q": "' + "x" * 80 + '"}'},
}


def stored(message: dict[str, Any] | None = None, finish: str = "stop") -> StoredAnswer:
    msg = message or {"role": "assistant", "content": CONTENT}
    choice = {"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}
    body = {
        "id": "chatcmpl-orig",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }
    body |= {"usage": USAGE, "system_fingerprint": "fp1"}
    return StoredAnswer(orjson.dumps(body), "m", 1000.0, 2.5, "q")


def completion_answer() -> StoredAnswer:
    choice = {"index": 0, "text": CONTENT, "logprobs": None, "finish_reason": "stop"}
    body = {"id": "cmpl-orig", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}
    return StoredAnswer(orjson.dumps({**body, "usage": USAGE}), "m", 1000.0, 2.5)


def hit(answer: StoredAnswer, similarity: float | None = None) -> CacheHit:
    return CacheHit(answer, "semantic" if similarity else "exact", "e1", similarity)


@pytest.fixture
def sdk() -> Callable[[bytes, str], openai.AsyncOpenAI]:
    """A client whose every request is answered with the given body (through httpx, no server)."""

    def make(body: bytes, content_type: str) -> openai.AsyncOpenAI:
        async def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"content-type": content_type}, content=body)

        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        return openai.AsyncOpenAI(
            base_url="http://cache.test/v1", api_key="k", http_client=http, max_retries=0
        )

    return make


def test_split_text_concatenates_back() -> None:
    for text in ("", "a", "x" * 32, "x" * 33, CONTENT, "🌍" * 1000):
        pieces = split_text(text)
        assert "".join(pieces) == text and len(pieces) <= 8


def test_json_replay_is_fresh_and_marked_cached() -> None:
    answer = stored()
    data = orjson.loads(replay_json(answer, hit(answer, 0.93), now=5000.5))
    original = orjson.loads(answer.body)
    assert data["id"].startswith("chatcmpl-cache-") and data["id"] != original["id"]
    assert data["created"] == 5000
    assert data["choices"] == original["choices"]
    assert data["usage"] == {**USAGE, "prompt_tokens_details": {"cached_tokens": 12}}
    assert data["epp_cache"] == {"tier": "semantic", "similarity": 0.93}
    assert (
        orjson.loads(replay_json(answer, hit(answer)))["id"]
        != orjson.loads(replay_json(answer, hit(answer)))["id"]
    )
    text = orjson.loads(replay_json(completion_answer(), hit(completion_answer())))
    assert text["id"].startswith("cmpl-cache-") and text["choices"][0]["text"] == CONTENT


def test_sse_replay_shape() -> None:
    events = replay_sse(stored(), hit(stored()), include_usage=False)
    assert events[-1] == b"data: [DONE]\n\n"
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-cache-")
    assert all(c["object"] == "chat.completion.chunk" and c["system_fingerprint"] == "fp1" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(chunks) > 3 and "usage" not in chunks[-1]
    with_usage = [orjson.loads(e[6:]) for e in replay_sse(stored(), hit(stored()), include_usage=True)[:-1]]
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 12
    }
    assert all(c["usage"] is None for c in with_usage[:-1])


def test_sse_replay_assembles_back_into_the_stored_answer() -> None:
    for answer in (
        stored(),
        stored({"role": "assistant", "content": None, "tool_calls": [CALL]}, "tool_calls"),
    ):
        assembler = StreamAssembler("chat")
        for event in replay_sse(answer, hit(answer), include_usage=True):
            assembler.feed(event)
        result = assembler.result()
        assert result is not None
        again, original = orjson.loads(result), orjson.loads(answer.body)
        assert again["choices"] == original["choices"]
        assert again["usage"]["completion_tokens"] == USAGE["completion_tokens"]
    completion = completion_answer()
    assembler = StreamAssembler("completion")
    for event in replay_sse(completion, hit(completion), include_usage=False):
        assembler.feed(event)
    result = assembler.result()
    assert result is not None and orjson.loads(result)["choices"][0]["text"] == CONTENT


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [c async for c in stream]


async def test_the_openai_sdk_reads_a_json_hit(sdk: Callable[[bytes, str], openai.AsyncOpenAI]) -> None:
    answer = stored()
    client = sdk(replay_json(answer, hit(answer)), "application/json")
    chat = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    assert chat.choices[0].message.content == CONTENT
    assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens == 12
    await client.close()


async def test_the_openai_sdk_reads_a_streamed_hit_byte_equal(
    sdk: Callable[[bytes, str], openai.AsyncOpenAI],
) -> None:
    answer = stored()
    client = sdk(b"".join(replay_sse(answer, hit(answer), include_usage=True)), "text/event-stream")
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "q"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await collect(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.encode() == CONTENT.encode()
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 52
    await client.close()


async def test_the_openai_sdk_reads_streamed_tool_calls(
    sdk: Callable[[bytes, str], openai.AsyncOpenAI],
) -> None:
    answer = stored({"role": "assistant", "content": None, "tool_calls": [CALL]}, "tool_calls")
    client = sdk(b"".join(replay_sse(answer, hit(answer), include_usage=False)), "text/event-stream")
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "q"}], stream=True
    )
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    async for chunk in stream:
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls" and calls is not None and len(calls) == 1
    assert calls[0].id == "call_9"
    assert calls[0].function.name == "lookup"
    assert calls[0].function.arguments == CALL["function"]["arguments"]  # type: ignore[index]
    await client.close()


async def test_the_openai_sdk_reads_a_streamed_completion(
    sdk: Callable[[bytes, str], openai.AsyncOpenAI],
) -> None:
    answer = completion_answer()
    client = sdk(b"".join(replay_sse(answer, hit(answer), include_usage=False)), "text/event-stream")
    stream = await client.completions.create(model="m", prompt="q", stream=True)
    texts = [c.choices[0].text for c in await collect(stream) if c.choices]
    assert "".join(texts).encode() == CONTENT.encode()
    await client.close()
