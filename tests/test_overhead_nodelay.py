"""Servers on our own listen sockets disable Nagle on accepted connections.

asyncio sets TCP_NODELAY only when the socket's proto is IPPROTO_TCP; a socket made with proto 0 left Nagle
on, and uvicorn's two writes per response then waited for the client's delayed ACK (+40 ms per response).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from bench.sim.fleet import bind_socket
from epp.embedded_http import listen_socket


@pytest.mark.parametrize("make_socket", [listen_socket, bind_socket], ids=["embedded_http", "sim_fleet"])
async def test_accepted_connections_have_nodelay(make_socket: Callable[[str, int], socket.socket]) -> None:
    accepted: asyncio.Queue[int] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        await accepted.put(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    sock = make_socket("127.0.0.1", 0)
    server = await asyncio.start_server(on_connect, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        assert await asyncio.wait_for(accepted.get(), 5) != 0
        writer.close()
