"""The HTTP API (epp/servers/http.py) over a real scheduler, through httpx's ASGI transport."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.config.picker_config import EndpointPickerConfig
from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.metrics import EppMetrics
from epp.requestcontrol.director import Director, DirectorSettings
from epp.scheduling.builder import build_scheduler
from epp.scheduling.types import Criticality
from epp.servers.http import create_http_app
from scorers.builtin import default_registry

PICKER_CONFIG = {
    "plugins": [
        {"type": "saturation-filter"},
        {"type": "prefix-cache-scorer", "parameters": {"blockSize": 16}},
        {"type": "queue-scorer"},
        {"type": "max-score-picker"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "saturation-filter"},
                {"pluginRef": "prefix-cache-scorer", "weight": 3},
                {"pluginRef": "queue-scorer"},
                {"pluginRef": "max-score-picker"},
            ],
        }
    ],
}


@dataclass
class Model:
    criticality: Criticality
    target: str


class Models:
    """A ModelResolver: `batch` is sheddable, `chat` is rewritten to adapter `chat-lora`."""

    def __init__(self) -> None:
        self.models = {
            "batch": Model(Criticality.SHEDDABLE, "batch"),
            "chat": Model(Criticality.STANDARD, "chat-lora"),
        }

    def lookup(self, model_name: str) -> Model | None:
        return self.models.get(model_name)

    def choose_target(self, model_name: str, rng: random.Random) -> str:
        return self.models[model_name].target


@dataclass
class Harness:
    client: httpx.AsyncClient
    datastore: Datastore
    metrics: EppMetrics

    def scrape(self, name: str, waiting: int = 0) -> None:
        self.datastore.update_metrics(
            name, MetricsSnapshot(waiting=waiting, running=0, kv_cache_usage=0.1, scraped_at=time.monotonic())
        )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    ds = Datastore(staleness_s=60.0)
    ds.set_endpoints([Endpoint("pod-a", "127.0.0.1", 8001), Endpoint("pod-b", "127.0.0.1", 8002)])
    metrics = EppMetrics(ds)
    rng = random.Random(7)
    config = EndpointPickerConfig.model_validate(PICKER_CONFIG)
    scheduler = build_scheduler(config, ds, default_registry(), rng)
    service = Director(scheduler, ds, Models(), metrics, rng, DirectorSettings("PREFIX_CACHE"))
    app = create_http_app(service, ds, metrics.registry, max_body_bytes=4096)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://epp") as client:
        yield Harness(client, ds, metrics)


def chat(model: str, text: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def test_pick_returns_endpoint_and_scores(harness: Harness) -> None:
    harness.scrape("pod-a")
    harness.scrape("pod-b")
    prompt = "You are a careful assistant. " * 20
    r = await harness.client.post("/pick", json=chat("chat", prompt))
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["endpoint"] in {"127.0.0.1:8001", "127.0.0.1:8002"}
    assert first["endpoint"].endswith(str({"pod-a": 8001, "pod-b": 8002}[first["endpoint_name"]]))
    assert first["strategy"] == "PREFIX_CACHE"
    assert first["profile"] == "default"
    assert first["target_model"] == "chat-lora"
    assert first["rewritten"] is True
    assert set(first["scores"]) == {"prefix-cache-scorer", "queue-scorer"}
    assert set(first["total_scores"]) == {"pod-a", "pod-b"}
    assert first["prefix_match_ratio"] == 0.0
    # The index learned from the first pick: the same prompt now matches fully on that pod.
    r = await harness.client.post("/pick?path=/v1/chat/completions", json=chat("chat", prompt))
    second = r.json()
    assert second["endpoint_name"] == first["endpoint_name"]
    assert second["prefix_match_ratio"] == 1.0
    # /pick does not count requests in flight: epp never sees them end.
    assert all(s.in_flight == 0 for s in harness.datastore.states())


async def test_completions_by_path(harness: Harness) -> None:
    harness.scrape("pod-a")
    body = {"model": "batch", "prompt": "hello"}
    r = await harness.client.post("/pick", json=body, headers={"x-epp-path": "/v1/completions"})
    assert r.status_code == 200
    assert r.json()["rewritten"] is False
    # On the chat path a completions body lacks `messages`.
    r = await harness.client.post("/pick?path=/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_body"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, None),
        (b'{"model": "nope", "prompt": "x"}', 404, "model_not_found"),
    ],
)
async def test_bad_requests(harness: Harness, content: bytes, status: int, code: str | None) -> None:
    harness.scrape("pod-a")
    r = await harness.client.post("/pick", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]


async def test_oversize_body_is_413(harness: Harness) -> None:
    harness.scrape("pod-a")
    r = await harness.client.post("/pick", json=chat("chat", "x" * 5000))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit applies while reading
        for _ in range(10):
            yield b"x" * 1000

    r = await harness.client.post("/pick", content=chunks())
    assert r.status_code == 413


async def test_saturated_pool_sheds_sheddable_requests(harness: Harness) -> None:
    harness.scrape("pod-a", waiting=50)
    harness.scrape("pod-b", waiting=50)
    r = await harness.client.post("/pick", json=chat("batch", "hi"))
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error"
    # A standard request still gets an endpoint (queues rather than fails).
    r = await harness.client.post("/pick", json=chat("chat", "hi"))
    assert r.status_code == 200


async def test_no_endpoint_is_503_and_readyz_flips(harness: Harness) -> None:
    r = await harness.client.get("/readyz")
    assert r.status_code == 503
    assert "fresh metrics" in r.json()["reason"]
    r = await harness.client.post("/pick", json=chat("chat", "hi"))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_endpoint"
    harness.scrape("pod-b")
    r = await harness.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["schedulable_endpoints"] == 1
    r = await harness.client.post("/pick", json=chat("chat", "hi"))
    assert r.json()["endpoint_name"] == "pod-b"
    harness.datastore.record_scrape_failure("pod-b", "connection refused")
    assert (await harness.client.get("/readyz")).status_code == 503
    harness.datastore.set_endpoints([])
    r = await harness.client.get("/readyz")
    assert r.json()["reason"] == "no endpoints configured"
    assert (await harness.client.get("/healthz")).status_code == 200


async def test_metrics_after_decisions(harness: Harness) -> None:
    harness.scrape("pod-a")
    for _ in range(3):
        assert (await harness.client.post("/pick", json=chat("chat", "hello there"))).status_code == 200
    assert (await harness.client.post("/pick", content=b"[]")).status_code == 400
    r = await harness.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    assert values[("epp_decisions_total", (("result", "ok"), ("strategy", "PREFIX_CACHE")))] == 3
    assert values[("epp_decisions_total", (("result", "bad_request"), ("strategy", "PREFIX_CACHE")))] == 1
    assert values[("llm_d_epp_scheduler_e2e_duration_seconds_count", ())] == 4
    assert (
        values[
            (
                "llm_d_epp_prefix_indexer_hit_ratio_count",
                (("plugin_name", "prefix-cache-scorer"), ("plugin_type", "prefix-cache-scorer")),
            )
        ]
        == 3
    )
    picks = [
        value
        for (name, labels), value in values.items()
        if name == "llm_d_epp_scheduler_attempts_total"
        and {("endpoint_name", "pod-a"), ("status", "success")} <= set(labels)
    ]
    assert picks == [3]
    assert values[("llm_d_epp_ready_endpoints", (("name", "default"),))] == 1
    assert (
        values[
            ("llm_d_epp_per_endpoint_queue_size", (("model_server_endpoint", "pod-a"), ("name", "default")))
        ]
        == 0
    )


async def test_unknown_route_and_method(harness: Harness) -> None:
    assert (await harness.client.get("/pick")).status_code == 405
    assert (await harness.client.get("/nope")).status_code == 404
