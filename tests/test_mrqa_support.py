"""A tiny OpenAI-compatible streaming chat server for the multi-round QA client tests (no tests here)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class ServerBehaviour:
    """What the fake server does: delays in wall seconds, an error status, or an error mid-stream."""

    first_token_delay: float = 0.0
    token_delay: float = 0.0
    error_status: int | None = None
    stream_error_after: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def prompt_tokens(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages) // 4


def _chunk(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def make_app(b: ServerBehaviour) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        b.requests.append(body)
        b.headers.append(dict(request.headers))
        if b.error_status is not None:
            error = {"message": "server is saturated", "type": "overloaded", "param": None, "code": None}
            return JSONResponse({"error": error}, status_code=b.error_status)
        n_tokens = int(body["max_tokens"])
        n_prompt = prompt_tokens(body["messages"])

        async def stream() -> AsyncIterator[bytes]:
            await asyncio.sleep(b.first_token_delay)
            for i in range(n_tokens):
                if i and b.token_delay:
                    await asyncio.sleep(b.token_delay)
                if b.stream_error_after is not None and i == b.stream_error_after:
                    yield _chunk({"error": {"message": "engine died", "type": "internal", "code": 500}})
                    return
                yield _chunk({"choices": [{"index": 0, "delta": {"content": f"w{i} "}}], "usage": None})
            yield _chunk({"choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_tokens}})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@asynccontextmanager
async def fake_server(behaviour: ServerBehaviour) -> AsyncIterator[str]:
    """Serve `behaviour` on a free loopback port in this loop; yields the base URL (…/v1)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue until uvicorn accepts them, so no need to wait for its start
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(behaviour), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task
        sock.close()


def closed_port_url() -> str:
    """A base URL nobody listens on (the port was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
