"""Bounded fuzzing of `epp gateway` over healthy simulated pods: no 5xx of its own, no hang.

Hypothesis draws request bodies (JSON shapes near the OpenAI schema, and arbitrary bytes) and headers; each
request goes to the running gateway over plain HTTP. The pods are healthy and fast, so any 5xx comes from
epp itself, and the client's timeout (well above the gateway's) catches a hang. After the run a normal
request still succeeds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.sim.fleet import SimFleet
from tests.test_gateway_support import MODEL, addresses, serving

pytestmark = pytest.mark.slow

CLIENT_TIMEOUT_S = 15.0  # far above the gateway's own limits in this test: reaching it is a hang

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "", "tool"]) | _json_leaf, "content": _json}
)
_chat = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, "", "unknown/model"]) | _json_leaf},
    optional={
        "messages": st.lists(_message, max_size=3) | _json,
        "stream": _json_leaf,
        "max_tokens": st.integers(min_value=-5, max_value=8) | _json_leaf,
        "cache_salt": _json_leaf,
        "prompt": _json,
    },
)
_body = st.one_of(_chat.map(orjson.dumps), st.binary(max_size=300), _json.map(orjson.dumps))
_header_name = st.sampled_from(
    ["x-request-id", "content-type", "x-gateway-inference-objective", "x-gateway-model-name", "accept"]
)
# HTTP clients refuse values with leading or trailing whitespace before sending: strip them.
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=60
).map(str.strip)
_headers = st.dictionaries(_header_name, _header_value, max_size=4)
_path = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings", "/x"])


class _Background:
    """A gateway over two simulated pods, on an event loop in a thread (hypothesis tests are sync)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._main(),), daemon=True
        )

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with (
            SimFleet(pods=2, profile="tiny", time_scale=50.0, log_level="critical") as fleet,
            serving(addresses(fleet), first_byte_timeout_s=5.0, chunk_timeout_s=5.0) as gateway,
        ):
            self.base_url = gateway.base_url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> _Background:
        self._thread.start()
        assert self._ready.wait(30), "gateway did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        stop = self._stop
        assert stop is not None
        self.loop.call_soon_threadsafe(stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    with _Background() as background:
        yield background.base_url


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert "Traceback" not in response.text


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=_path, body=_body, headers=_headers)
def test_fuzzed_requests_never_get_a_5xx_from_the_gateway(
    gateway_url: str, path: str, body: bytes, headers: dict[str, Any]
) -> None:
    with httpx.Client(base_url=gateway_url, timeout=CLIENT_TIMEOUT_S, trust_env=False) as client:
        method = "GET" if path == "/v1/models" else "POST"
        _check(client.request(method, path, content=body, headers=headers))


def test_a_normal_request_succeeds_after_fuzzing(gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url, timeout=CLIENT_TIMEOUT_S, trust_env=False) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert r.status_code == 200 and r.json()["choices"]
