"""Size limits at the gateway's edge: head bytes and count, body size, bodies buffered across requests."""

from __future__ import annotations

import asyncio

from tests.test_gateway_edge_support import (
    CHAT_BODY,
    assert_still_serves,
    connect,
    exchange,
    fleet_and_gateway,
    post,
    read_response,
)

HEADER_LIMIT = 4096


async def test_one_huge_header_is_431_and_closed_without_buffering_it() -> None:
    async with fleet_and_gateway(max_header_bytes=HEADER_LIMIT) as gw:
        reader, writer = await connect(gw)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Big: ")
        # Far more than the limit, in pieces: the refusal must come before the header ends.
        sent = 0
        try:
            for _ in range(64):
                writer.write(b"a" * 65536)
                await writer.drain()
                sent += 65536
        except ConnectionError:
            pass  # refused and closed mid-send: what should happen
        r = await read_response(reader)
        writer.close()
        assert r.status == 431
        assert r.error()["code"] == "headers_too_large"
        assert r.headers["connection"] == "close"
        await assert_still_serves(gw)


async def test_headers_over_the_byte_limit_in_total_are_431() -> None:
    async with fleet_and_gateway(max_header_bytes=HEADER_LIMIT) as gw:
        extra = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(50))  # ~5.5 KB, 50 headers
        r = await exchange(gw, post("/v1/chat/completions", CHAT_BODY, extra))
        assert r.status == 431 and r.error()["code"] == "headers_too_large"
        await assert_still_serves(gw)


async def test_too_many_headers_are_431() -> None:
    async with fleet_and_gateway(max_headers=20) as gw:
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
        r = await exchange(gw, post("/v1/chat/completions", CHAT_BODY, extra))
        assert r.status == 431 and r.error()["code"] == "too_many_headers"
        # Within the count: served.
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(10))
        r = await exchange(gw, post("/v1/chat/completions", CHAT_BODY, extra))
        assert r.status == 200, r.body
        await assert_still_serves(gw)


async def test_a_huge_request_target_is_414() -> None:
    async with fleet_and_gateway(max_header_bytes=HEADER_LIMIT) as gw:
        r = await exchange(gw, b"GET /v1/models?q=" + b"x" * 8000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert r.status in (414, 431)
        assert r.error()["code"] in ("uri_too_long", "headers_too_large")
        await assert_still_serves(gw)


async def test_a_body_over_the_limit_is_413_declared_or_chunked() -> None:
    async with fleet_and_gateway(max_body_bytes=1000) as gw:
        r = await exchange(gw, post("/v1/chat/completions", CHAT_BODY + b" " * 2000))
        assert r.status == 413 and r.error()["code"] == "body_too_large"
        body = CHAT_BODY + b" " * 2000
        raw = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        r = await exchange(gw, raw)
        assert r.status == 413 and r.error()["code"] == "body_too_large"
        await assert_still_serves(gw)


async def test_bodies_beyond_the_buffer_budget_get_503_with_retry_after() -> None:
    size = 200_000
    body = CHAT_BODY + b" " * (size - len(CHAT_BODY))  # trailing whitespace: still valid JSON
    async with fleet_and_gateway(max_buffered_body_bytes=300_000, max_body_bytes=size) as gw:
        # A holds 200 kB of the 300 kB budget (its declared length is reserved up front) while it sends.
        reader_a, writer_a = await connect(gw)
        writer_a.write(post("/v1/chat/completions", body)[: -size // 2])
        await writer_a.drain()
        await asyncio.sleep(0.2)
        r = await exchange(gw, post("/v1/chat/completions", body))
        assert r.status == 503
        assert r.error()["code"] == "server_busy"
        assert r.headers["retry-after"] == "1"
        # Chunked (nothing declared): refused once what it sent no longer fits.
        raw = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        r = await exchange(gw, raw)
        assert r.status == 503 and r.headers["retry-after"] == "1"
        # A small request still fits next to A.
        await assert_still_serves(gw)
        writer_a.write(body[-size // 2 :])
        await writer_a.drain()
        r = await read_response(reader_a)
        assert r.status == 200, r.body
        writer_a.close()
        # A released its share: a second big body is taken now.
        r = await exchange(gw, post("/v1/chat/completions", body))
        assert r.status == 200, r.body
        await assert_still_serves(gw)


async def test_many_concurrent_big_bodies_never_exceed_the_budget() -> None:
    size = 100_000
    body = CHAT_BODY + b" " * (size - len(CHAT_BODY))
    async with fleet_and_gateway(max_buffered_body_bytes=350_000, max_body_bytes=size) as gw:
        results = await asyncio.gather(*(exchange(gw, post("/v1/chat/completions", body)) for _ in range(20)))
        statuses = {r.status for r in results}
        assert statuses <= {200, 503}, statuses
        assert 200 in statuses
        budget = gw.app._budget
        assert budget.held == 0  # every lease released
        await assert_still_serves(gw)


async def test_a_refused_body_still_uploading_gets_its_503_not_a_reset() -> None:
    size = 200_000
    body = CHAT_BODY + b" " * (size - len(CHAT_BODY))
    async with fleet_and_gateway(max_buffered_body_bytes=300_000, max_body_bytes=size) as gw:
        _, holder = await connect(gw)  # holds 200 kB of the budget while it sends slowly
        holder.write(post("/v1/chat/completions", body)[: -size // 2])
        await holder.drain()
        await asyncio.sleep(0.2)
        reader, writer = await connect(gw)
        request = post("/v1/chat/completions", body)
        for start in range(0, len(request), len(request) // 4):  # longer than the 1 s close linger
            writer.write(request[start : start + len(request) // 4])
            await writer.drain()
            await asyncio.sleep(0.4)
        r = await read_response(reader)
        assert r.status == 503 and r.error()["code"] == "server_busy"
        writer.close()
        holder.close()
        await assert_still_serves(gw)
