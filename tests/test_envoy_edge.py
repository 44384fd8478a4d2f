"""The hardened edge behind a real Envoy: allow-listed routes, client limits, Envoy's errors as JSON, and
requests already routed surviving the picker's death."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from bench.envoy_stack.stack import EnvoyStack, StackOptions
from bench.sim.fleet import SimFleet
from tests.test_envoy_support import MODEL, chat_body, metric_sum, poll

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


class FleetThread:
    """A SimFleet served by its own event loop in a daemon thread."""

    def __init__(self, pods: int, time_scale: float = 1.0) -> None:
        self.fleet = SimFleet(pods=pods, profile="tiny", time_scale=time_scale)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FleetThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fleet.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.fleet.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def addresses(self) -> list[str]:
        return [url.removeprefix("http://") for url in self.fleet.urls]


@pytest.fixture(scope="module")
def stack() -> Iterator[EnvoyStack]:
    options = StackOptions(fail_open=False, header_timeout_s=1.0, body_timeout_s=1.0, message_timeout_s=1.0)
    with FleetThread(2) as fleet, EnvoyStack(fleet.addresses, options) as envoy:
        yield envoy


def assert_error(status: int, body: bytes, expected_status: int, code: str) -> None:
    assert status == expected_status, body[:300]
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code and error["message"], error


def assert_still_serving(stack: EnvoyStack) -> None:
    assert stack.failed_child() is None
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=chat_body("after"), timeout=30)
    assert response.status_code == 200, response.text


def raw(port: int, data: bytes, wait_s: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes; (status, body) of the answer Envoy gives before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
            head, sep, body = out.partition(b"\r\n\r\n")
            length = [int(v) for k, _, v in _fields(head) if k == b"content-length"]
            if sep and length and len(body) >= length[0]:
                break
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _fields(head: bytes) -> list[tuple[bytes, bytes, bytes]]:
    return [
        (k.strip().lower(), s, v.strip())
        for k, s, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    ]


HTTP_CASES = {
    "pod admin path": ("POST", "/sim/restart", {}, b"", 404, "not_found"),
    "vllm admin path": ("POST", "/collective_rpc", {}, b"{}", 404, "not_found"),
    "GET on a POST route": ("GET", "/v1/chat/completions", {}, b"", 405, "method_not_allowed"),
    "OPTIONS on a POST route": ("OPTIONS", "/v1/completions", {}, b"", 405, "method_not_allowed"),
    "POST on a GET route": ("POST", "/v1/models", {}, b"{}", 405, "method_not_allowed"),
    "body over 10 MiB": ("POST", "/v1/chat/completions", {}, b"x" * (10 * MIB + 1), 413, "body_too_large"),
    "headers over 64 KiB": (
        "POST",
        "/v1/chat/completions",
        {"x-big": "a" * 70_000},
        b"{}",
        431,
        "headers_too_large",
    ),
    "over 100 headers": (
        "POST",
        "/v1/chat/completions",
        {f"x-h{i}": "a" for i in range(110)},
        b"{}",
        431,
        "headers_too_large",
    ),
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_refused_with_json(stack: EnvoyStack, case: str) -> None:
    method, path, headers, body, status, code = HTTP_CASES[case]
    response = httpx.request(method, f"{stack.base_url}{path}", headers=headers, content=body, timeout=30)
    assert_error(response.status_code, response.content, status, code)
    assert response.headers["content-type"] == "application/json"
    if status == 405:
        assert response.headers["allow"] in ("POST", "GET")
    assert_still_serving(stack)


RAW_CASES = {
    "HTTP/1.1 without Host": (
        b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
        400,
        "invalid_request",
    ),
    "gzip, chunked": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
        501,
        "not_implemented",
    ),
    "not HTTP": (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    "slow headers": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", 408, "request_timeout"),
    "slow body": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{",
        408,
        "request_timeout",
    ),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_malformed_or_slow_clients_get_json(stack: EnvoyStack, case: str) -> None:
    data, status, code = RAW_CASES[case]
    got, body = raw(stack.port, data)
    assert_error(got, body, status, code)
    assert_still_serving(stack)


def test_body_between_4_and_10_mib_reaches_the_picker(stack: EnvoyStack) -> None:
    """gRPC's default 4 MiB message cap used to turn these into 502s (fail closed)."""
    body = {"model": "unknown-model", "messages": [{"role": "user", "content": "x" * (6 * MIB)}]}
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=30)
    # Routed by epp (no model config: any model passes) to a pod, which refuses the model.
    assert response.status_code == 404, response.text[:300]
    assert response.headers["x-epp-endpoint"] and "does not exist" in response.json()["error"]["message"]
    assert_still_serving(stack)


def test_hung_picker_gets_json_504(stack: EnvoyStack) -> None:
    assert stack.epp is not None
    stack.epp.proc.send_signal(signal.SIGSTOP)
    try:
        response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=chat_body("hung"), timeout=30)
    finally:
        stack.epp.proc.send_signal(signal.SIGCONT)
    assert_error(response.status_code, response.content, 504, "endpoint_picker_timeout")
    assert_still_serving(stack)


def test_routed_streams_survive_the_picker_dying() -> None:
    """SIGKILL epp serve under fail-closed Envoy with 10 streams in flight: all complete; new requests get
    the fail-closed JSON error."""
    with (
        FleetThread(3, time_scale=0.1) as fleet,
        EnvoyStack(fleet.addresses, StackOptions(fail_open=False)) as st,
    ):
        # epp hands requests over to Envoy only once Envoy's access log is connected (it opens with the first
        # flush after a request): before that a stream stays open, as with an Envoy configured without one.
        warm = httpx.post(f"{st.base_url}/v1/chat/completions", json=chat_body("warm-up"), timeout=30)
        assert warm.status_code == 200, warm.text
        time.sleep(1.0)
        done = asyncio.run(_streams_while_killing(st))
        assert done == ["done"] * 10
        response = httpx.post(f"{st.base_url}/v1/chat/completions", json=chat_body("new"), timeout=30)
        assert_error(response.status_code, response.content, 502, "endpoint_picker_unavailable")
        assert st.envoy is not None and st.envoy.alive()


async def _streams_while_killing(stack: EnvoyStack) -> list[str]:
    started = 0
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60, trust_env=False) as client:

        async def stream(i: int) -> str:
            nonlocal started
            body = {"model": MODEL, "prompt": f"stream {i} " * 5, "max_tokens": 60, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                started += 1
                lines = [line async for line in response.aiter_lines()]
            return "done" if "data: [DONE]" in lines else "cut"

        tasks = [asyncio.create_task(stream(i)) for i in range(10)]
        await asyncio.to_thread(poll, lambda: started == 10, "10 streams to start")
        assert stack.epp is not None
        began = time.monotonic()
        stack.epp.kill()
        results = list(await asyncio.gather(*tasks))
        assert time.monotonic() - began > 0.2  # the streams really outlived the picker
        return results


def test_in_flight_counts_end_with_the_access_log(stack: EnvoyStack) -> None:
    """epp closes the ext_proc stream at routing: the pod counts the request until Envoy logs its end."""

    def in_flight() -> float:
        return metric_sum(stack.epp_url, "epp_endpoint_in_flight_requests")

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60, trust_env=False) as client:
            body = {"model": MODEL, "prompt": "count me " * 5, "max_tokens": 400, "stream": True}

            async def one() -> int:
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    async for _ in response.aiter_lines():
                        pass
                    return response.status_code

            tasks = [asyncio.create_task(one()) for _ in range(3)]
            await asyncio.to_thread(poll, lambda: in_flight() == 3, "3 requests in flight")
            return list(await asyncio.gather(*tasks))

    assert asyncio.run(run()) == [200, 200, 200]
    poll(lambda: in_flight() == 0, "in-flight counts back to 0")
