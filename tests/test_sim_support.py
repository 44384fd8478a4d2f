"""Helpers shared by the simulator's HTTP tests: scraping, SSE parsing, distinct prompts."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def prompt(topic: int, words: int = 480) -> str:
    """English-like text that shares no prefix with another topic's text."""
    return f"Topic {topic}: " + " ".join(
        WORDS[(i * (topic + 3)) % len(WORDS)] + str(topic) for i in range(words)
    )


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Samples of /metrics keyed by name, or name{k=v,...} when labelled (histogram parts included)."""
    r = await client.get(f"{url}/metrics")
    assert r.status_code == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k not in ("engine", "model_name")}
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else ""
            )
            out[key] = s.value
    return out


def sse_events(text: str) -> list[str]:
    """Payloads of `data: ...` events; asserts the framing is well formed."""
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(block[len("data: ") :])
    return events


def sse_json(text: str) -> list[dict[str, Any]]:
    """JSON chunks of an SSE body, asserting it ends with [DONE]."""
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]
