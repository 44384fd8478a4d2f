"""epp.cache.answers: which answers are storable; a streamed answer assembled whatever its chunking."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from epp.cache.answers import StreamAssembler, storable_reason

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 100, "model": "m"}
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def answer(**choice: Any) -> bytes:
    one = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop", **choice}
    return orjson.dumps(
        {"id": "x", "object": "chat.completion", "model": "m", "choices": [one], "usage": USAGE}
    )


def event(data: Any, eol: bytes = b"\n") -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + eol + eol


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    return {**HEAD, "choices": choices, **extra}


def chat_stream(eol: bytes = b"\n", finish: str = "stop", done: bool = True) -> bytes:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": ""}}
    events = [
        chunk({"role": "assistant", "content": ""}, system_fingerprint="fp"),
        chunk({"content": "Héllo, "}),
        chunk({"content": "wörld 🌍"}),
        chunk({"tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk({}, finish),
        {**HEAD, "choices": [], "usage": USAGE},
    ]
    out = b": keep-alive" + eol + b"".join(event(e, eol) for e in events)
    return out + (event(b"[DONE]", eol) if done else b"")


EXPECTED_CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 100,
    "model": "m",
    "system_fingerprint": "fp",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Héllo, wörld 🌍",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
                ],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": USAGE,
}


def assemble(*chunks: bytes, kind: Any = "chat", max_bytes: int = 1 << 20) -> StreamAssembler:
    assembler = StreamAssembler(kind, max_bytes)
    for c in chunks:
        assembler.feed(c)
    return assembler


def test_storable_answers() -> None:
    assert storable_reason(answer(), "chat") is None
    assert storable_reason(answer(finish_reason="tool_calls"), "chat") is None
    assert storable_reason(answer(finish_reason="length"), "chat") == "length"
    assert storable_reason(answer(finish_reason="content_filter"), "chat") == "content_filter"
    assert storable_reason(answer(finish_reason=None), "chat") == "unfinished"
    assert storable_reason(answer(finish_reason="weird"), "chat") == "finish_other"
    assert storable_reason(answer(), "completion") == "not_completion"
    assert storable_reason(b'{"error": {"message": "boom"}}', "chat") == "error"
    assert storable_reason(b"<html>", "chat") == "not_json"
    assert storable_reason(b"[]", "chat") == "not_json"
    assert storable_reason(answer(), "chat", max_bytes=10) == "too_large"
    two = orjson.loads(answer())
    two["choices"].append({**two["choices"][0], "index": 1})
    assert storable_reason(orjson.dumps(two), "chat") == "n>1"
    two["choices"] = []
    assert storable_reason(orjson.dumps(two), "chat") == "no_choices"
    text = {"object": "text_completion", "choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}
    assert storable_reason(orjson.dumps(text), "completion") is None
    text["choices"][0]["finish_reason"] = "tool_calls"  # type: ignore[index]
    assert storable_reason(orjson.dumps(text), "completion") == "finish_other"


def test_a_stream_assembles_into_the_json_answer() -> None:
    result = assemble(chat_stream()).result()
    assert result is not None and orjson.loads(result) == EXPECTED_CHAT
    assert storable_reason(result, "chat") is None
    crlf = assemble(chat_stream(b"\r\n")).result()
    assert crlf is not None and orjson.loads(crlf) == EXPECTED_CHAT
    cr = assemble(chat_stream(b"\r")).result()
    assert cr is not None and orjson.loads(cr) == EXPECTED_CHAT


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_split_anywhere_assembles_the_same(eol: bytes) -> None:
    stream = chat_stream(eol)
    whole = assemble(stream).result()
    for cut in range(len(stream) + 1):
        assert assemble(stream[:cut], stream[cut:]).result() == whole, cut
    assert assemble(*(stream[i : i + 1] for i in range(len(stream)))).result() == whole


def test_what_a_stream_must_not_become() -> None:
    missing_done = assemble(chat_stream(done=False))
    assert missing_done.result() is None and missing_done.failed == "incomplete_stream"
    length = assemble(chat_stream(finish="length"))
    assert length.result() is None and length.failed == "length"
    error = assemble(event(chunk({"content": "a"})), b"event: error\ndata: {}\n\n", event(b"[DONE]"))
    assert error.result() is None and error.failed == "error"
    error_chunk = assemble(event({"error": {"message": "boom"}}), event(b"[DONE]"))
    assert error_chunk.result() is None and error_chunk.failed == "error"
    second = {**HEAD, "choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": None}]}
    two = assemble(event(chunk({"content": "a"})), event(second), event(chunk({}, "stop")), event(b"[DONE]"))
    assert two.result() is None and two.failed == "n>1"
    garbage = assemble(b"data: {not json\n\n", event(b"[DONE]"))
    assert garbage.result() is None and garbage.failed == "bad_event"
    big = assemble(chat_stream(), max_bytes=10)
    assert big.result() is None and big.failed == "too_large"
    endless_line = assemble(b"data: " + b"x" * 100, max_bytes=50)
    assert endless_line.result() is None and endless_line.failed == "too_large"
    logprobs = {**HEAD, "choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": []}}]}
    assert assemble(event(logprobs), event(chunk({}, "stop")), event(b"[DONE]")).result() is None


def test_a_completions_stream() -> None:
    def text(piece: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
        return {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m", "choices": [choice]}

    usage = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 7,
        "model": "m",
        "choices": [],
        "usage": USAGE,
    }
    stream = b"".join(event(e) for e in (text("Once "), text("upon"), text("", "stop"), usage)) + event(
        b"[DONE]"
    )
    result = assemble(stream, kind="completion").result()
    assert result is not None
    data = orjson.loads(result)
    assert data["object"] == "text_completion" and data["choices"][0]["text"] == "Once upon"
    assert data["usage"] == USAGE and storable_reason(result, "completion") is None
    assert assemble(stream, kind="chat").result() is None  # a completions stream is not a chat answer
