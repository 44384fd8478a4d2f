"""Config reload (epp.config_reload): the traffic documents swap on a file change or SIGHUP, requests in
flight finish on the version they started with, and a bad file is refused while the old version serves.

The provider is a small aiohttp app that records each request's model; a streaming request is held open
until the test releases it, so the reload happens while it is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from epp.config import EppConfig, load_config
from epp.config_reload import ConfigWatcher, restart_only_changes
from gateway.server import Gateway
from tests.test_gateway_support import metric_value, serving
from tests.test_serve_support import stop_process, wait_until

HOST = "reload-provider.example"
POOL_FIXTURE = Path(__file__).parent / "fixtures" / "config" / "good" / "local-pool.yaml"

CONFIG = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: reload-provider}
spec:
  host: reload-provider.example
  path: /v1/chat/completions
  configs:
    defaultConfig: {openAIConfig: {model: MODEL, apiKey: sk-reload-test-key}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reload-provider}
spec:
  host: reload-provider.example
  trafficPolicy: {tls: {mode: DISABLE}}
"""


def config_text(model: str) -> str:
    return CONFIG.replace("MODEL", model)


class Provider:
    """Records each request's model; a stream sends one chunk, then waits for `release`."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.release = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model = body["model"]
        self.models.append(model)
        if not body.get("stream"):
            return web.json_response(_completion(model))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: " + orjson.dumps(_chunk(model, "first")) + b"\n\n")
        await self.release.wait()
        await response.write(b"data: " + orjson.dumps(_chunk(model, "last")) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _completion(model: str) -> dict[str, object]:
    message = {"role": "assistant", "content": "ok"}
    return {
        "id": "c1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunk(model: str, text: str) -> dict[str, object]:
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return {"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [delta]}


@contextlib.asynccontextmanager
async def reloading_gateway(
    config: Path, interval_s: float = 0.02
) -> AsyncIterator[tuple[Gateway, Provider]]:
    provider = Provider()
    await provider.start()
    try:
        resolve = (f"{HOST}:80=127.0.0.1:{provider.port}",)
        async with serving(
            "", [str(config)], wait_scraped=False, resolve=resolve, config_reload_interval_s=interval_s
        ) as gateway:
            yield gateway, provider
    finally:
        provider.release.set()
        await provider.stop()


def reloads(gateway: Gateway, result: str) -> float:
    return float(gateway.reloader.metrics.reloads.labels(result)._value.get())


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    async def probe() -> bool:
        return predicate()

    await wait_until(probe, what, deadline_s=5.0, interval=0.01)


def hello(stream: bool = False) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": stream}


async def test_changed_model_applies_to_new_requests_while_a_stream_in_flight_finishes(
    tmp_path: Path,
) -> None:
    config = tmp_path / "traffic.yaml"
    config.write_text(config_text("model-a"))
    async with (
        reloading_gateway(config) as (gateway, provider),
        httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10) as client,
    ):
        headers = {"host": HOST}
        request = client.build_request("POST", "/v1/chat/completions", json=hello(True), headers=headers)
        stream = await client.send(request, stream=True)
        chunks = stream.aiter_text()
        first = await anext(chunks)
        assert "first" in first and provider.models == ["model-a"]

        config.write_text(config_text("model-bbbb"))  # another size: a change even on a coarse mtime
        await wait_for(lambda: reloads(gateway, "ok") == 1, "the reload")
        r = await client.post("/v1/chat/completions", json=hello(), headers=headers)
        assert r.status_code == 200, r.text
        assert provider.models == ["model-a", "model-bbbb"]

        provider.release.set()  # the stream started before the reload ends normally
        rest = "".join([t async for t in chunks])
        await stream.aclose()
        assert stream.status_code == 200
        assert "last" in rest and "[DONE]" in rest
        assert '"model-a"' in rest and "model-bbbb" not in rest


async def test_broken_file_is_refused_and_the_old_version_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "traffic.yaml"
    config.write_text(config_text("model-a"))
    async with reloading_gateway(config) as (gateway, provider):
        before = gateway.reloader.metrics.last_success._value.get()
        with caplog.at_level(logging.WARNING, logger="epp.config_reload"):
            config.write_text(config_text("model-a").replace("host: reload-provider.example\n  path", "path"))
            await wait_for(lambda: reloads(gateway, "error") == 1, "the refused reload")
            await asyncio.sleep(0.1)  # more polls of the same broken file: no second warning
        warnings = [r for r in caplog.records if r.name == "epp.config_reload"]
        assert len(warnings) == 1, warnings
        assert "config reload refused" in warnings[0].getMessage()
        assert str(config) in warnings[0].getMessage()
        assert "sk-reload-test-key" not in caplog.text
        async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10) as client:
            r = await client.post("/v1/chat/completions", json=hello(), headers={"host": HOST})
            assert r.status_code == 200, r.text
            assert provider.models == ["model-a"]
            text = (await client.get("/metrics")).text
        assert metric_value(text, "epp_config_reloads_total", result="error") == 1
        assert metric_value(text, "epp_config_reloads_total", result="ok") == 0
        assert metric_value(text, "epp_config_last_reload_success_timestamp_seconds") == before
        assert reloads(gateway, "ok") == 0


async def test_sighup_handler_reloads_unchanged_looking_files_and_notes_restart_only_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler wait_for_shutdown installs for SIGHUP is `request_reload` (the subprocess test sends
    the signal itself); polling is off here, so only the request reloads."""
    config = tmp_path / "traffic.yaml"
    config.write_text(config_text("model-a"))
    initial = load_config([config], {})
    applied: list[EppConfig] = []

    def apply(new: EppConfig) -> list[str]:
        applied.append(new)
        return []

    watcher = ConfigWatcher(
        [config],
        initial,
        lambda: load_config([config], {}, strategy="RANDOM"),
        apply,
        CollectorRegistry(),
        interval_s=0,
    )
    watcher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="epp.config_reload"):
            watcher.request_reload()
            await wait_for(lambda: len(applied) == 1, "the forced reload")
        assert restart_only_changes(initial, watcher.current) == ["picker config"]
        assert "picker config changed: restart to apply" in caplog.text
    finally:
        await watcher.close()


@pytest.mark.slow
async def test_sighup_to_epp_gateway_reloads_and_says_what_needs_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(POOL_FIXTURE.read_text())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epp.cli",
        "gateway",
        "--port",
        "0",
        "--config",
        str(config),
        "--config-reload-interval",
        "0",  # only SIGHUP reloads
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert "listening on " in line, line
        base = line.split("listening on ")[1].strip()
        config.write_text(POOL_FIXTURE.read_text().replace("LOAD_AWARE", "RANDOM"))
        proc.send_signal(signal.SIGHUP)
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=10) as client:

            async def reloaded() -> bool:
                text = (await client.get("/metrics")).text
                return metric_value(text, "epp_config_reloads_total", result="ok") == 1

            await wait_until(reloaded, "the SIGHUP reload")
    finally:
        code = await stop_process(proc)
    assert code == 0
    log = (await proc.stderr.read()).decode()
    assert "picker config changed: restart to apply" in log
    assert "config reloaded" in log and "Traceback" not in log
