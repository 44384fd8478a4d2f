"""Helpers for the gateway tests: a gateway in front of simulated pods, in-process, on free loopback ports."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from bench.sim.fleet import SimFleet
from gateway.server import Gateway, GatewayOptions, build_gateway
from tests.test_serve_support import wait_until

MODEL = "sim/tiny"


def addresses(*fleets: SimFleet) -> str:
    """The `--endpoints` value for every pod of `fleets`."""
    return ",".join(url.removeprefix("http://") for f in fleets for url in f.urls)


@contextlib.asynccontextmanager
async def serving(
    endpoints: str, config: list[str] | None = None, wait_scraped: bool = True, **options: Any
) -> AsyncIterator[Gateway]:
    """A started gateway over `endpoints`; with `wait_scraped`, once every endpoint was scraped."""
    defaults: dict[str, Any] = {"port": 0, "scrape_interval_s": 0.02, "seed": 1, "log_level": "WARNING"}
    opts = GatewayOptions(endpoints=endpoints, config_paths=config or [], **{**defaults, **options})
    gateway = build_gateway(opts, {})
    await gateway.start()
    try:
        expected = len(gateway.datastore.endpoints())

        async def all_scraped() -> bool:
            return len(gateway.datastore.schedulable()) == expected

        if wait_scraped:
            await wait_until(all_scraped, "every endpoint to be scraped")
        yield gateway
    finally:
        await gateway.stop()


@contextlib.asynccontextmanager
async def client_of(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=10.0) as client:
        yield client


def chat(text: str, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        **extra,
    }


def completion(text: str, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": text, "max_tokens": max_tokens, **extra}


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an OpenAI-style JSON error with `status` (and `code`); returns its `error` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code
    return error


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
