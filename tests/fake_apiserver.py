"""A FAKE Kubernetes apiserver for the discovery tests: recorded list and watch streams over real HTTP.

No apiserver can run on these machines, so the discovery's list/watch logic is driven by this: a raw asyncio
HTTP/1.1 server on a free loopback port that answers GET on the collections a test registers, in the
apiserver's wire format. A list answers the collection's next recorded list (the last one repeats; items
filtered by a `labelSelector` of `k=v` terms); a watch (`?watch=1`) is a chunked response of one JSON event
per line, fed from the collection's queue, held open until the test pushes `CLOSE` or stops the server.

Limits (what a real apiserver does that this does not): no authentication or RBAC (the bearer token is only
recorded), no TLS, no resourceVersion semantics (a watch gets whatever the test queued, whatever version it
asks from; 410 only when the test queues it), watch events are not filtered by labelSelector (a real one
turns a pod leaving the selector into DELETED: the client's own label check is what is tested), no
fieldSelector (recorded only), no timeoutSeconds (the test ends a watch), no other verbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

FIXTURES = Path(__file__).parent / "fixtures" / "kube"
CLOSE = "close"  # queued: the open watch ends (as the apiserver's timeoutSeconds would)


def fixture(name: str) -> Any:
    """A recorded list (`.json`) or watch stream (`.jsonl`: a list of events) from tests/fixtures/kube."""
    text = (FIXTURES / name).read_text()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


@dataclass
class FakeRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("1", "true")


@dataclass
class FakeCollection:
    """One collection (e.g. /api/v1/namespaces/llm/pods): its recorded lists and queued watch events."""

    lists: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None  # answer every request with this error status (e.g. 403) while set
    events: asyncio.Queue[dict[str, Any] | str] = field(default_factory=asyncio.Queue)
    watches_opened: int = 0

    def push(self, *events: dict[str, Any] | str) -> None:
        for event in events:
            self.events.put_nowait(event)

    def next_list(self) -> dict[str, Any]:
        return self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]


class FakeApiServer:
    """`async with FakeApiServer() as api:` serves `api.collection(path)` at `api.url` until exit;
    `stop()` / `start()` take it away and bring it back on the same port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[FakeRequest] = []
        self._collections: dict[str, FakeCollection] = {}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def collection(self, path: str) -> FakeCollection:
        return self._collections.setdefault(path, FakeCollection())

    def requests_to(self, path: str, watch: bool | None = None) -> list[FakeRequest]:
        return [r for r in self.requests if r.path == path and (watch is None or r.is_watch == watch)]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every open connection (the apiserver went away)."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = _parse(head)
                self.requests.append(request)
                await self._answer(request, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, request: FakeRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        collection = self._collections.get(request.path)
        if collection is None or (not request.is_watch and not collection.lists):
            await _send_json(
                writer, 404, _status(404, "NotFound", f"the server could not find {request.path}")
            )
        elif collection.status is not None:
            await _send_json(
                writer, collection.status, _status(collection.status, "Forbidden", "recorded error")
            )
        elif request.is_watch:
            await self._watch(collection, reader, writer)
        else:
            await _send_json(writer, 200, _select(collection.next_list(), request.query.get("labelSelector")))

    async def _watch(
        self, collection: FakeCollection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Relay queued events until CLOSE; a client that hangs up leaves the rest queued for the next."""
        collection.watches_opened += 1
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        hung_up = asyncio.ensure_future(reader.read(1))  # a watching client sends nothing: EOF = gone
        try:
            while True:
                getting = asyncio.ensure_future(collection.events.get())
                await asyncio.wait({getting, hung_up}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    raise ConnectionResetError("the watching client hung up")
                event = getting.result()
                if event == CLOSE:  # the end of the stream, and of the connection (`Connection: close`)
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    raise ConnectionResetError("watch closed")
                line = json.dumps(event).encode() + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
        finally:
            hung_up.cancel()


def _parse(head: bytes) -> FakeRequest:
    lines = head.decode("latin-1").split("\r\n")
    _method, target, _version = lines[0].split(" ", 2)
    url = urlsplit(target)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return FakeRequest(url.path, dict(parse_qsl(url.query)), headers)


def _select(doc: dict[str, Any], selector: str | None) -> dict[str, Any]:
    if not selector:
        return doc
    wanted = dict(term.split("=", 1) for term in selector.split(","))
    items = [i for i in doc["items"] if wanted.items() <= (i["metadata"].get("labels") or {}).items()]
    return {**doc, "items": items}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


async def _send_json(writer: asyncio.StreamWriter, status: int, doc: dict[str, Any]) -> None:
    body = json.dumps(doc).encode()
    writer.write(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (status, len(body), body)
    )
    await writer.drain()
