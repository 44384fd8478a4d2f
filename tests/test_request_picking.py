"""Director over a real Scheduler and Datastore: outcomes, recorded decisions, error replies."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.picking import ErrorReply, NullRecorder, error_reply
from epp.request import CHAT_PATH, RequestError
from epp.requestcontrol.director import Director, DirectorSettings
from epp.scheduling.profile import assemble_profile
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import Criticality, LLMRequest, NoEndpointError, SchedulingResult, ShedError
from scorers.least_request_scorer import LeastRequestScorer
from scorers.max_score_picker import MaxScorePicker
from scorers.saturation_filter import SaturationFilter
from tests.test_request_parse import DictResolver, ModelSpec


class ListRecorder:
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, float, float | None, str | None]] = []

    def record_decision(
        self,
        strategy: str,
        result: str,
        latency_s: float,
        prefix_match_ratio: float | None,
        endpoint: str | None,
    ) -> None:
        self.decisions.append((strategy, result, latency_s, prefix_match_ratio, endpoint))


def snapshot(waiting: int = 0, loras: frozenset[str] = frozenset()) -> MetricsSnapshot:
    return MetricsSnapshot(
        waiting=waiting, running=0, kv_cache_usage=0.1, running_loras=loras, scraped_at=time.monotonic()
    )


def make_datastore() -> Datastore:
    ds = Datastore(staleness_s=600)
    ds.set_endpoints([Endpoint("pod-a", "10.0.0.1", 8000), Endpoint("pod-b", "10.0.0.2", 8000)])
    ds.update_metrics("pod-a", snapshot())
    ds.update_metrics("pod-b", snapshot(waiting=3))
    return ds


def make_service(
    ds: Datastore, resolver: DictResolver | None = None, recorder: ListRecorder | None = None
) -> Director:
    rng = random.Random(1)
    profile = assemble_profile(
        "default", [(SaturationFilter(), 1.0), (LeastRequestScorer(), 1.0), (MaxScorePicker(rng=rng), 1.0)]
    )
    return Director(
        Scheduler(ds, profile),
        ds,
        resolver,
        recorder or ListRecorder(),
        rng,
        DirectorSettings("least-request"),
    )


def chat(model: str = "m", content: str = "hi") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}]})


def test_pick_ok_records_and_does_not_acquire() -> None:
    ds, rec = make_datastore(), ListRecorder()
    outcome = make_service(ds, recorder=rec).begin(chat(), {"x-request-id": "r1"}, CHAT_PATH)
    assert outcome.request.request_id == "r1"
    assert outcome.result.endpoint.name == "pod-a"  # pod-b has a queue
    assert outcome.rewritten_body is None
    [(strategy, result, latency, _ratio, endpoint)] = rec.decisions
    assert (strategy, result, endpoint) == ("least-request", "ok", "pod-a")
    assert latency >= 0
    assert all(s.in_flight == 0 for s in ds.states())


def test_bodyless_request_on_non_inference_path_is_routed() -> None:
    outcome = make_service(make_datastore()).begin(b"", {}, "/v1/models")
    assert outcome.request.prompt == "" and outcome.request.model == ""
    assert outcome.result.endpoint.name == "pod-a"


def test_empty_body_on_inference_path_is_400() -> None:
    rec = ListRecorder()
    with pytest.raises(RequestError) as info:
        make_service(make_datastore(), recorder=rec).begin(b"", {}, CHAT_PATH)
    assert info.value.status == 400
    assert rec.decisions[0][1] == "bad_request"


def test_rewrite_returns_new_body_and_lora() -> None:
    resolver = DictResolver({"food": ModelSpec(Criticality.STANDARD, ["food-lora"])})
    ds = make_datastore()
    ds.update_metrics("pod-a", snapshot(loras=frozenset({"food-lora"})))  # a pod reports the adapter
    outcome = make_service(ds, resolver).begin(chat("food"), {}, CHAT_PATH)
    assert outcome.request.lora_adapter == "food-lora"
    assert outcome.rewritten_body is not None
    assert orjson.loads(outcome.rewritten_body)["model"] == "food-lora"


def test_adapter_loaded_on_a_pod_is_recognised() -> None:
    ds = make_datastore()
    ds.update_metrics("pod-b", snapshot(waiting=3, loras=frozenset({"sql-lora"})))
    outcome = make_service(ds).begin(chat("sql-lora"), {}, CHAT_PATH)
    assert outcome.request.lora_adapter == "sql-lora"
    assert make_service(ds).begin(chat("base"), {}, CHAT_PATH).request.lora_adapter is None


def test_shed_and_no_endpoint_are_recorded_and_raised() -> None:
    ds, rec = make_datastore(), ListRecorder()
    ds.update_metrics("pod-a", snapshot(waiting=50))
    ds.update_metrics("pod-b", snapshot(waiting=50))
    resolver = DictResolver({"bulk": ModelSpec(Criticality.SHEDDABLE), "m": ModelSpec()})
    service = make_service(ds, resolver, rec)
    with pytest.raises(ShedError):
        service.begin(chat("bulk"), {}, CHAT_PATH)
    assert service.begin(chat("m"), {}, CHAT_PATH).result.endpoint.name in {
        "pod-a",
        "pod-b",
    }  # Standard queues
    ds.set_endpoints([])
    with pytest.raises(NoEndpointError):
        service.begin(chat("m"), {}, CHAT_PATH)
    assert [d[1] for d in rec.decisions] == ["shed", "ok", "no_endpoint"]


def test_unexpected_scheduler_failure_is_recorded_as_error() -> None:
    class Broken:
        def schedule(self, request: LLMRequest, profile: str | None = None) -> SchedulingResult:
            raise KeyError("boom")

    rec = ListRecorder()
    service = Director(
        Broken(),  # type: ignore[arg-type]
        make_datastore(),
        None,
        rec,
        random.Random(0),
        DirectorSettings("x"),
    )
    with pytest.raises(KeyError):
        service.begin(chat(), {}, CHAT_PATH)
    assert rec.decisions[0][1] == "error"


def error_json(reply: ErrorReply) -> dict[str, object]:
    body = orjson.loads(reply.body)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_error_replies_are_openai_shaped() -> None:
    r = error_reply(RequestError(404, "The model `x` does not exist.", param="model", code="model_not_found"))
    assert r.status == 404 and error_json(r)["code"] == "model_not_found"
    r = error_reply(ShedError("saturated"))
    assert r.status == 429 and error_json(r)["message"] == "saturated"
    r = error_reply(NoEndpointError())
    assert r.status == 503 and error_json(r)["code"] == "no_endpoint"
    r = error_reply(RuntimeError("secret internals /etc/passwd"))
    assert r.status == 503 and b"secret" not in r.body


def test_null_recorder_accepts_decisions() -> None:
    ds = make_datastore()
    service = Director(
        make_service(ds).scheduler, ds, None, NullRecorder(), random.Random(0), DirectorSettings("x")
    )
    assert service.begin(chat(), {}, CHAT_PATH).result.endpoint.name == "pod-a"
