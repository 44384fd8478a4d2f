"""Slow and silent clients: header, body and idle timeouts, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import sys

import httpx
import orjson

from bench.sim.fleet import SimFleet
from tests.test_gateway_edge_support import (
    CHAT_BODY,
    assert_still_serves,
    closed_by_peer,
    connect,
    fleet_and_gateway,
    post,
    read_response,
)
from tests.test_gateway_support import addresses, chat
from tests.test_serve_support import stop_process

FAST = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "idle_timeout_s": 0.5}
READY = re.compile(r"^epp gateway listening on (http://127\.0\.0\.1:\d+)\n$")


async def test_half_sent_headers_get_408_and_are_closed() -> None:
    async with fleet_and_gateway(**FAST) as gw:
        reader, writer = await connect(gw)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        r = await read_response(reader, timeout_s=5)
        assert r.status == 408 and r.error()["code"] == "header_timeout"
        assert await closed_by_peer(reader, 5)
        writer.close()
        await assert_still_serves(gw)


async def test_headers_trickled_byte_by_byte_are_still_cut_at_the_header_timeout() -> None:
    async with fleet_and_gateway(**FAST) as gw:
        reader, writer = await connect(gw)
        cut = False
        try:
            for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n" + b"X-Slow: " + b"y" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
                if reader.at_eof():
                    cut = True
                    break
        except ConnectionError:
            cut = True
        assert cut or await closed_by_peer(reader, 5)
        writer.close()
        await assert_still_serves(gw)


async def test_a_connection_that_sends_nothing_is_closed() -> None:
    async with fleet_and_gateway(**FAST) as gw:
        reader, writer = await connect(gw)
        assert await closed_by_peer(reader, 5)
        writer.close()
        await assert_still_serves(gw)


async def test_half_sent_body_gets_408_json() -> None:
    async with fleet_and_gateway(**FAST) as gw:
        reader, writer = await connect(gw)
        raw = post("/v1/chat/completions", CHAT_BODY)
        writer.write(raw[:-10])
        r = await read_response(reader, timeout_s=5)
        assert r.status == 408 and r.error()["code"] == "body_timeout"
        assert r.headers["connection"] == "close"
        assert await closed_by_peer(reader, 5)
        writer.close()
        await assert_still_serves(gw)


async def test_after_a_whole_request_the_next_half_sent_head_or_body_still_gets_408() -> None:
    # A request that came in one read arms no timer: the timers of the next request on the same connection
    # must still be armed when its head or body stays incomplete.
    for cut, code in (
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n", "header_timeout"),
        (None, "body_timeout"),
    ):
        async with fleet_and_gateway(**FAST) as gw:
            reader, writer = await connect(gw)
            writer.write(post("/v1/chat/completions", CHAT_BODY))
            first = await read_response(reader, timeout_s=10)
            assert first.status == 200
            writer.write(cut if cut is not None else post("/v1/chat/completions", CHAT_BODY)[:-10])
            r = await read_response(reader, timeout_s=5)
            assert r.status == 408 and r.error()["code"] == code
            assert await closed_by_peer(reader, 5)
            writer.close()
            await assert_still_serves(gw)


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    async with fleet_and_gateway(**FAST) as gw:
        reader, writer = await connect(gw)
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        r = await read_response(reader)
        assert r.status == 200, r.body
        # A second request on the same connection in time is served...
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        assert (await read_response(reader)).status == 200
        # ...then, idle, it is closed.
        assert await closed_by_peer(reader, 5)
        writer.close()
        await assert_still_serves(gw)


async def _stream_tokens(client: httpx.AsyncClient, max_tokens: int) -> tuple[int, bool]:
    """(content events, whether [DONE] came) of one streamed chat; a cut stream ends early."""
    events, done = 0, False
    try:
        body = chat("drain me", max_tokens=max_tokens, stream=True, ignore_eos=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    orjson.loads(line[6:])
                    events += 1
    except httpx.HTTPError:
        pass
    return events, done


async def test_sigterm_drains_in_flight_streams_then_cuts_and_exits_0() -> None:
    # 20x slower than real time: a token every ~45 ms.
    async with SimFleet(pods=1, profile="tiny", time_scale=0.05, log_level="critical") as fleet:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "epp.cli",
            "gateway",
            "--endpoints",
            addresses(fleet),
            "--port",
            "0",
            "--drain-timeout",
            "2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(30):
                line = (await proc.stdout.readline()).decode()
            match = READY.match(line)
            assert match, line
            async with httpx.AsyncClient(base_url=match.group(1), trust_env=False, timeout=30) as client:
                await asyncio.sleep(0.5)  # the pod is scraped
                short = asyncio.create_task(_stream_tokens(client, 12))  # ~0.6 s: finishes within the drain
                long = asyncio.create_task(_stream_tokens(client, 600))  # ~27 s: cut at the drain timeout
                await asyncio.sleep(0.3)
                proc.terminate()
                async with asyncio.timeout(15):
                    (short_events, short_done), (long_events, long_done) = await asyncio.gather(short, long)
                    code = await proc.wait()
            assert short_done and short_events > 0
            assert not long_done and long_events < 600
            assert code == 0
            log = (await proc.stderr.read()).decode()
            assert "Traceback" not in log, log
            assert "drain timeout" in log
        finally:
            await stop_process(proc)
