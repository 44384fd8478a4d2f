"""Client-controlled label values are capped: a flood of random model names through a real gateway (over
simulated pods) leaves at most cap + 1 values per label, and a real model keeps its own."""

from __future__ import annotations

import asyncio
import random
import string

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.sim.fleet import SimFleet
from epp.labelled_metrics import DEFAULT_LABEL_CAP, OTHER
from tests.test_gateway_support import MODEL, addresses, chat, client_of, serving

FLOOD = 5000
CONCURRENCY = 32


def label_values(text: str, family: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if label in s.labels
    }


@pytest.mark.slow
async def test_a_flood_of_random_model_names_leaves_at_most_cap_plus_one_label_values() -> None:
    rng = random.Random(7)
    names = ["flood-" + "".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(FLOOD)]
    async with (
        SimFleet(pods=2, profile="tiny", time_scale=50.0, log_level="critical") as fleet,
        serving(addresses(fleet)) as gateway,
        client_of(gateway) as client,
    ):
        first = await client.post("/v1/chat/completions", json=chat("hello"))
        assert first.status_code == 200, first.text
        queue = list(names)
        statuses: list[int] = []

        async def worker() -> None:
            while queue:
                body = chat("hi", model=queue.pop())
                statuses.append((await client.post("/v1/chat/completions", json=body)).status_code)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        assert len(statuses) == FLOOD
        after = await client.post("/v1/chat/completions", json=chat("hello again"))
        assert after.status_code == 200, after.text
        text = (await client.get("/metrics")).text
    for family, label in (
        ("gen_ai_server_request_duration_seconds", "gen_ai_request_model"),
        ("llm_d_epp_request", "model_name"),
        ("llm_d_epp_request", "target_model_name"),
        ("llm_d_epp_request_duration_seconds", "model_name"),
    ):
        values = label_values(text, family, label)
        assert OTHER in values, (family, label)
        assert len(values) <= DEFAULT_LABEL_CAP + 1, (family, label, len(values))
        assert MODEL in values, (family, label)  # the real model keeps its own label after the flood
    # The real model's two requests are both under its own label.
    real = [
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "llm_d_epp_request"
        for s in f.samples
        if s.name == "llm_d_epp_request_total" and s.labels["model_name"] == MODEL
    ]
    assert sum(real) == 2
