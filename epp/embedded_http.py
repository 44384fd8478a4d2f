"""An ASGI app served by uvicorn inside the caller's event loop, leaving signals to the caller."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the host program handles signals and shuts down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class EmbeddedServer:
    """`port = await server.start()` serves `app` on host:port (0: any free port) until `stop()`."""

    def __init__(
        self,
        app: Any,  # an ASGI application
        host: str,
        port: int,
        log_level: str = "INFO",
        name: str = "http",
        graceful_shutdown_s: int = 2,
    ) -> None:
        self.host = host
        self.port = port
        self._config = uvicorn.Config(
            app,
            log_level=log_level.lower(),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self._name = name
        self._server: _Uvicorn | None = None
        self.task: asyncio.Task[None] | None = None  # done when the server exited

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises OSError when it cannot start."""
        sock = listen_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _Uvicorn(self._config)
        self.task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self._name)
        # uvicorn exposes startup only as a flag, so poll it.
        while not self._server.started and not self.task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()  # surfaces the startup error
            raise OSError(f"{self._name} server on {self.host}:{self.port} exited at startup")
        return self.port

    async def stop(self) -> None:
        """Stop accepting; in-flight requests get the graceful shutdown period."""
        if self._server is not None and self.task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self.task
        self._server = self.task = None


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket on (host, port), IPv4 or IPv6; port 0 lets the OS pick a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP. Without it
    # Nagle holds uvicorn's second write of a response until the client's delayed ACK: +40 ms per response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
