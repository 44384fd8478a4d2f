"""The relay ends a response with the reply's last chunk when the reply knows it is the last."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from gateway.context import BytesReply, RequestContext
from gateway.streaming import relay


class PartsReply:
    """Yields `parts`; says the last one is last only when `knows_end`."""

    def __init__(self, parts: list[bytes], knows_end: bool, last_at: int | None = None) -> None:
        self.status = 200
        self.headers = [(b"content-type", b"text/event-stream")]
        self._parts = parts
        self._knows_end = knows_end
        self._last_at = len(parts) - 1 if last_at is None else last_at
        self.last_chunk = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, part in enumerate(self._parts):
            self.last_chunk = self._knows_end and i == self._last_at
            yield part


async def relayed(reply: Any) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await relay(reply, send, RequestContext("/v1/completions", {}, b""))
    return sent


async def test_a_reply_that_knows_its_last_chunk_ends_the_response_with_it() -> None:
    sent = await relayed(PartsReply([b"a", b"b"], knows_end=True))
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"a", True), (b"b", False)]


async def test_a_reply_that_does_not_know_gets_an_empty_final_message() -> None:
    sent = await relayed(PartsReply([b"a", b"b"], knows_end=False))
    bodies = [(m.get("body"), m.get("more_body")) for m in sent[1:]]
    assert bodies == [(b"a", True), (b"b", True), (b"", False)]


async def test_a_whole_body_goes_out_in_one_message() -> None:
    sent = await relayed(BytesReply(200, b"{}"))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["more_body"] is False


async def test_a_chunk_after_the_last_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.streaming"):
        sent = await relayed(PartsReply([b"a", b"b"], knows_end=True, last_at=0))
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"a", False)]
    assert "after the last one was dropped" in caplog.text
