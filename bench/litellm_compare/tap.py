"""A counting TCP relay in front of a provider: it logs the arrival time of every HTTP request it forwards.

Run as `python -m bench.litellm_compare.tap HOST:PORT...`; it prints `listen I PORT` per upstream, `ready`,
then `req I T` per request (T: time.monotonic(), comparable across processes on Linux). Bytes are relayed
unchanged; h11 only watches the client's side to find request starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence

import h11

CHUNK = 65536


def _request_starts(conn: h11.Connection, data: bytes) -> tuple[int, bool]:
    """Feed client bytes to a server-role parser; (requests started, parser still usable)."""
    conn.receive_data(data)
    started = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return started, True
        if isinstance(event, h11.Request):
            started += 1
        elif isinstance(event, h11.EndOfMessage):
            # Answer the parser (not the client) so it accepts the next request on this connection.
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return started, False
            conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return started, False


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int | None) -> None:
    """Copy reader to writer; with an index, log each request start seen in the bytes."""
    conn = h11.Connection(h11.SERVER) if index is not None else None
    try:
        while data := await reader.read(CHUNK):
            if conn is not None:
                try:
                    started, usable = _request_starts(conn, data)
                except h11.ProtocolError:
                    started, usable = 0, False
                now = time.monotonic()
                for _ in range(started):
                    sys.stdout.write(f"req {index} {now:.6f}\n")
                if started:
                    sys.stdout.flush()
                if not usable:
                    conn = None
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(upstreams: Sequence[tuple[str, int]]) -> None:
    servers = []
    for index, (host, port) in enumerate(upstreams):

        async def handle(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, i: int = index, h: str = host, p: int = port
        ) -> None:
            try:
                ur, uw = await asyncio.open_connection(h, p)
            except OSError:
                w.close()
                return
            await asyncio.gather(_pipe(r, uw, i), _pipe(ur, w, None))

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        print(f"listen {index} {server.sockets[0].getsockname()[1]}", flush=True)
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def _parse(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m bench.litellm_compare.tap HOST:PORT...", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve([_parse(a) for a in args]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
