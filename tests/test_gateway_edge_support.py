"""Raw-socket helpers for the gateway edge tests: send exact bytes, read one HTTP/1.1 response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from bench.sim.fleet import SimFleet
from gateway.server import Gateway
from tests.test_gateway_support import MODEL, addresses, chat, client_of, serving


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated one keeps its last value
    body: bytes

    def error(self) -> dict[str, Any]:
        """The OpenAI-style error object, checked for shape."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        error: dict[str, Any] = orjson.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        return error


@contextlib.asynccontextmanager
async def fleet_and_gateway(**options: Any) -> AsyncIterator[Gateway]:
    async with (
        SimFleet(pods=1, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), **options) as gateway,
    ):
        yield gateway


async def connect(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gateway.port)


async def read_response(reader: asyncio.StreamReader, timeout_s: float = 10.0) -> RawResponse:
    """One response (Content-Length or chunked body)."""
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                parts.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await reader.read()
    return RawResponse(status, headers, body)


async def exchange(gateway: Gateway, data: bytes, timeout_s: float = 10.0) -> RawResponse:
    """Send `data` on a fresh connection and read one response."""
    reader, writer = await connect(gateway)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, timeout_s)
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 10.0) -> bool:
    """Whether the gateway closes the connection (EOF or reset) within `timeout_s`, ignoring what it sends."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    """A raw HTTP/1.1 POST with a Content-Length body."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


CHAT_BODY = orjson.dumps(chat("hello edge"))


async def assert_still_serves(gateway: Gateway) -> None:
    """A normal request right after succeeds: the gateway survived."""
    async with client_of(gateway) as client:
        r = await client.post("/v1/chat/completions", json=chat("still there?"))
        assert r.status_code == 200, r.text
        assert r.json()["model"] == MODEL
