"""Helpers for the serve tests: polling with a deadline, free ports, an ext_proc client playing Envoy."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

DEST = "x-gateway-destination-endpoint"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_until(
    probe: Callable[[], Awaitable[T | None]], what: str, deadline_s: float = 15.0, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `deadline_s` seconds."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while True:
        try:
            value = await probe()
        except Exception as exc:  # the server may not be up yet
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what} (last error: {last!r})")
        await asyncio.sleep(interval)


@dataclass
class ExtProcAnswer:
    destination: str | None  # the x-gateway-destination-endpoint header epp set
    status: int | None  # the immediate response status, on an error
    body: bytes  # the immediate response body, or the rewritten request body
    responses: list[Any]


async def extproc_route(port: int, body: dict[str, Any], path: str = "/v1/chat/completions") -> ExtProcAnswer:
    """Send one request's headers and body over ext_proc as Envoy does (BUFFERED body), end the stream."""
    raw = orjson.dumps(body)
    headers = [
        base_pb2.HeaderValue(key=k, raw_value=v.encode())
        for k, v in ((":method", "POST"), (":path", path), ("content-type", "application/json"))
    ]
    messages = [
        pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=headers))),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=raw, end_of_stream=True)),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        call = stub.Process()
        responses = []
        for message in messages:
            await call.write(message)
            responses.append(await call.read())
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF  # epp ends the stream once Envoy's side is done
        assert await call.code() == grpc.StatusCode.OK
    return _answer(responses)


def _answer(responses: list[Any]) -> ExtProcAnswer:
    last = responses[-1]
    if last.HasField("immediate_response"):
        imm = last.immediate_response
        return ExtProcAnswer(None, imm.status.code, imm.body, responses)
    common = last.request_body.response
    destination = None
    for option in common.header_mutation.set_headers:
        if option.header.key == DEST:
            destination = option.header.raw_value.decode()
    return ExtProcAnswer(destination, None, common.body_mutation.body, responses)


STARTUP_LINE = re.compile(r"epp serving: ext_proc grpc [^ ]+:(\d+), http [^ ]+:(\d+)")


@dataclass
class ServeProcess:
    """A running `epp serve` subprocess; its stderr is collected in `log`."""

    proc: asyncio.subprocess.Process
    grpc_port: int
    http_port: int
    log: list[str]
    drain: asyncio.Task[None]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


async def start_serve(*args: str, deadline_s: float = 30.0) -> ServeProcess:
    """Start `epp serve ARGS --grpc-port 0 --http-port 0` and wait for its startup line (ports)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epp.cli",
        "serve",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError("epp serve exited at startup:\n" + "".join(log))
                log.append(line)
                match = STARTUP_LINE.search(line)
                if match:
                    break
    except BaseException:
        await stop_process(proc)
        raise
    drain = asyncio.create_task(_drain(proc.stderr, log))
    return ServeProcess(proc, int(match.group(1)), int(match.group(2)), log, drain)


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode())


async def stop_process(proc: asyncio.subprocess.Process, grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


async def stop_serve(serve: ServeProcess) -> int:
    code = await stop_process(serve.proc)
    await serve.drain
    return code


@dataclass
class SimFleetProcess:
    """A running `epp sim` subprocess and its pods' host:port addresses."""

    proc: asyncio.subprocess.Process
    addresses: list[str]


async def start_sim(*args: str, deadline_s: float = 30.0) -> SimFleetProcess:
    """Start `epp sim ARGS` and wait for its `ready` line (pods print `pod I URL` before it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epp.cli",
        "sim",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    addresses: list[str] = []
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"epp sim {' '.join(args)} exited at startup")
                parts = line.split()
                if parts[:1] == ["pod"] and len(parts) >= 3:
                    addresses.append(parts[2].removeprefix("http://"))
                elif parts[:1] == ["ready"]:
                    return SimFleetProcess(proc, addresses)
    except BaseException:
        await stop_process(proc)
        raise
