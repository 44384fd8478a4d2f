"""An ASGI app served by uvicorn inside the caller's event loop, leaving signals to the caller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.server import ServerState

logger = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling (the host program handles signals), draining on shutdown."""

    drain_s: float = 2.0

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, let in-flight requests finish for `drain_s`, then cut their connections.

        Cutting (not cancelling, as uvicorn does) lets each app see its client leave and end cleanly: no
        "Exception in ASGI application" traceback per in-flight stream.
        """
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()  # idle: closed now; busy: closed once its answer is complete
        if not await _until_empty(state, self.drain_s):
            logger.warning(
                "drain timeout (%gs): cutting %d in-flight request(s)", self.drain_s, len(state.tasks)
            )
            for connection in list(state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            if not await _until_empty(state, 1.0):
                for task in state.tasks:
                    task.cancel()
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()


async def _until_empty(state: ServerState, timeout_s: float) -> bool:
    """Whether every connection and request task ended within `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while state.connections or state.tasks:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class EmbeddedServer:
    """`port = await server.start()` serves `app` on host:port (0: any free port) until `stop()`."""

    def __init__(
        self,
        app: Any,  # an ASGI application
        host: str,
        port: int,
        log_level: str = "INFO",
        name: str = "http",
        graceful_shutdown_s: float = 2.0,
        protocol: type[asyncio.Protocol] | None = None,
        reuse_port: bool = False,
    ) -> None:
        """`protocol`: an HTTP protocol class to use instead of uvicorn's pick (websockets are then off).
        `reuse_port`: bind with SO_REUSEPORT, so several processes can each listen on the same port."""
        self.host = host
        self.port = port
        self._reuse_port = reuse_port
        self._config = uvicorn.Config(
            app,
            log_level=log_level.lower(),
            lifespan="off",
            log_config=None,
            access_log=False,
            http=protocol or "auto",
            ws="none" if protocol is not None else "auto",
        )
        self._drain_s = graceful_shutdown_s
        self._name = name
        self._server: _Uvicorn | None = None
        self.task: asyncio.Task[None] | None = None  # done when the server exited

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises OSError when it cannot start."""
        sock = listen_socket(self.host, self.port, self._reuse_port)
        self.port = sock.getsockname()[1]
        self._server = _Uvicorn(self._config)
        self._server.drain_s = self._drain_s
        self.task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self._name)
        # uvicorn exposes startup only as a flag, so poll it.
        while not self._server.started and not self.task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()  # surfaces the startup error
            raise OSError(f"{self._name} server on {self.host}:{self.port} exited at startup")
        return self.port

    async def stop(self) -> None:
        """Stop accepting; in-flight requests get the graceful shutdown period, then are cut."""
        if self._server is not None and self.task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self.task
        self._server = self.task = None


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket on (host, port), IPv4 or IPv6; port 0 lets the OS pick a free one.

    `reuse_port` sets SO_REUSEPORT: every process whose socket has it may bind the same port, and the kernel
    spreads new connections over the ones listening (`epp gateway --workers`). A socket bound but never
    listening takes no connections: it only holds the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP. Without it
    # Nagle holds uvicorn's second write of a response until the client's delayed ACK: +40 ms per response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
