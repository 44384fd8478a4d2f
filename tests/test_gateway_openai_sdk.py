"""The official openai SDK, unmodified, against the gateway: chat, completions, streaming, models, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from bench.sim.fleet import SimFleet
from tests.test_gateway_support import MODEL, addresses, serving


@pytest.fixture
async def sdk() -> AsyncIterator[openai.AsyncOpenAI]:
    async with (
        SimFleet(pods=2, profile="tiny", time_scale=20.0, log_level="critical") as fleet,
        serving(addresses(fleet), strategy="PREFIX_CACHE") as gateway,
    ):
        client = openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key="sk-test", max_retries=0)
        try:
            yield client
        finally:
            await client.close()


async def test_chat_and_completions(sdk: openai.AsyncOpenAI) -> None:
    chat = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=3
    )
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 3
    completion = await sdk.completions.create(model=MODEL, prompt="once upon a time", max_tokens=4)
    assert completion.choices[0].text and completion.usage is not None
    assert completion.usage.completion_tokens == 4


async def test_streaming(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "stream"}], max_tokens=5, stream=True
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    stream_c = await sdk.completions.create(model=MODEL, prompt="stream", max_tokens=5, stream=True)
    texts = [c.choices[0].text async for c in stream_c if c.choices]
    assert "".join(texts)


async def test_models_list(sdk: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in sdk.models.list()]
    assert models == [MODEL]


async def test_errors_surface_as_sdk_exceptions(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(model=MODEL, messages=[])
