"""ResponseWatcher: the first chunk carrying content (TTFT) and the usage of a relayed answer."""

from __future__ import annotations

import orjson

from gateway.response_watch import ResponseWatcher, Usage

SSE = "text/event-stream; charset=utf-8"


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_chunk(delta: dict[str, object]) -> bytes:
    return event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


def test_role_only_first_event_is_not_content() -> None:
    w = ResponseWatcher(SSE)
    assert not w.feed(chat_chunk({"role": "assistant", "content": ""}))
    assert w.feed(chat_chunk({"content": "Hel"}))
    assert not w.feed(chat_chunk({"content": "lo"}))  # only the first content chunk counts


def test_events_split_across_chunks_and_crlf_framing() -> None:
    w = ResponseWatcher(SSE)
    data = chat_chunk({"content": "x"}).replace(b"\n", b"\r\n")
    assert not w.feed(data[:10])
    assert w.feed(data[10:])


def test_tool_calls_reasoning_and_completion_text_count_as_content() -> None:
    deltas: list[dict[str, object]] = [{"tool_calls": [{"index": 0}]}, {"reasoning_content": "hmm"}]
    for delta in deltas:
        assert ResponseWatcher(SSE).feed(chat_chunk(delta))
    completion = event({"object": "text_completion", "choices": [{"index": 0, "text": " once"}]})
    assert ResponseWatcher(SSE).feed(completion)


def test_stream_usage_from_the_last_event_that_has_one() -> None:
    w = ResponseWatcher(SSE)
    w.feed(chat_chunk({"content": "a"}))
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}
    w.feed(event({"choices": [], "usage": usage}) + b"data: [DONE]\n\n")
    assert w.usage() == Usage(7, 2, 4)


def test_json_answer_first_byte_is_ttft_and_usage_is_read_at_the_end() -> None:
    w = ResponseWatcher("application/json")
    body = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    assert w.feed(body[:5]) and not w.feed(body[5:])
    assert w.usage() == Usage(3, 5, None)


def test_garbage_and_missing_usage_give_none() -> None:
    w = ResponseWatcher(SSE)
    assert not w.feed(b"data: {not json\n\n: comment\n\n")
    assert w.usage() is None
    assert ResponseWatcher("application/json").usage() is None
