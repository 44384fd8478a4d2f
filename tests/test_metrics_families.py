"""Picker and GenAI metric families: the names docs/operations.md lists, and values from request facts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.labelled_metrics import OTHER, CappedLabel
from epp.metrics import EppMetrics
from epp.otel_metrics import GenAIFacts, GenAIMetrics
from epp.request_metrics import RequestFacts, RequestMetrics
from epp.scheduling.types import Criticality, LLMRequest

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def documented(section: str) -> set[str]:
    """Metric names in the first column of the tables under `### <section>`."""
    text = DOC.read_text()
    body = text.split(f"### {section}", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `([a-z_:]+)` \|", body, flags=re.M))


def exposed(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def request(model: str = "m", target: str = "m-lora", **extra: object) -> LLMRequest:
    return LLMRequest("r1", model, target, "hi", **extra)  # type: ignore[arg-type]


def test_every_documented_picker_and_genai_family_is_exposed() -> None:
    ds = Datastore(staleness_s=1.0)
    metrics = EppMetrics(ds)
    GenAIMetrics(metrics.registry)
    names = exposed(metrics.registry)
    for section in ("Picker metrics", "Gateway metrics"):
        missing = documented(section) - names
        assert not missing, f"{section}: documented but not exposed: {sorted(missing)}"
    assert {"llm_d_epp_request_total", "gen_ai_client_token_usage"} <= names  # the doc tables were read


def test_a_streaming_request_fills_the_request_families() -> None:
    registry = CollectorRegistry()
    m = RequestMetrics(registry)
    labels = m.labels(
        request(criticality=Criticality.CRITICAL, headers={"x-gateway-inference-fairness-id": "t1"})
    )
    assert labels == ("m", "m-lora", "t1", "1")
    m.started(labels)
    assert (
        samples(registry)[("llm_d_epp_request_running", tuple(sorted(zip(MODEL, labels, strict=True))))] == 1
    )
    m.ended(labels)
    facts = RequestFacts(
        200,
        2.0,
        streaming=True,
        ttft_s=0.5,
        request_bytes=300,
        response_bytes=5000,
        prompt_tokens=40,
        completion_tokens=31,
        cached_tokens=16,
        chunk_gaps_s=(0.05, 0.05),
    )
    m.finished(labels, facts)
    s = samples(registry)
    base = tuple(sorted(zip(MODEL, labels, strict=True)))
    assert s[("llm_d_epp_request_total", base)] == 1
    assert s[("llm_d_epp_request_running", base)] == 0
    assert s[("llm_d_epp_request_duration_seconds_sum", base)] == 2.0
    assert s[("llm_d_epp_request_size_bytes_sum", base)] == 300
    assert s[("llm_d_epp_response_size_bytes_sum", base)] == 5000
    assert s[("llm_d_epp_request_input_tokens_sum", base)] == 40
    assert s[("llm_d_epp_request_output_tokens_sum", base)] == 31
    assert s[("llm_d_epp_request_cached_tokens_sum", base)] == 16
    assert s[("llm_d_epp_request_ttft_seconds_sum", tuple(sorted((*base, ("streaming", "true")))))] == 0.5
    assert s[("llm_d_epp_request_streaming_tpot_seconds_sum", base)] == pytest.approx(1.5 / 30)
    assert s[("llm_d_epp_request_ntpot_seconds_sum", base)] == pytest.approx(2.0 / 31)
    assert s[("llm_d_epp_request_streaming_itl_seconds_count", base)] == 2
    assert not any(name == "llm_d_epp_request_error_total" for name, _ in s)


def test_an_error_counts_its_code_and_no_ttft() -> None:
    registry = CollectorRegistry()
    m = RequestMetrics(registry)
    labels = m.labels(request())
    m.finished(labels, RequestFacts(503, 0.01, ttft_s=0.01))
    s = samples(registry)
    base = tuple(sorted(zip(MODEL, labels, strict=True)))
    assert labels[2:] == ("default-flow", "0")
    assert s[("llm_d_epp_request_error_total", tuple(sorted((*base, ("error_code", "503")))))] == 1
    assert not any(name == "llm_d_epp_request_ttft_seconds_count" for name, _ in s)


def test_genai_families_use_the_spec_buckets_and_attributes() -> None:
    registry = CollectorRegistry()
    g = GenAIMetrics(registry)
    g.record(
        GenAIFacts(
            "chat",
            "openai",
            "gpt-4",
            "gpt-4-0613",
            "api.openai.com",
            "443",
            1.5,
            ttft_s=0.25,
            input_tokens=10,
            output_tokens=11,
        )
    )
    g.record(GenAIFacts("chat", "openai", "gpt-4", "", "api.openai.com", "443", 0.1, error_type="503"))
    s = samples(registry)
    attrs = (
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "gpt-4"),
        ("gen_ai_response_model", "gpt-4-0613"),
        ("server_address", "api.openai.com"),
        ("server_port", "443"),
    )
    ok = tuple(sorted((*attrs, ("error_type", ""))))
    assert s[("gen_ai_server_request_duration_seconds_bucket", tuple(sorted((*ok, ("le", "1.28")))))] == 0
    assert s[("gen_ai_server_request_duration_seconds_bucket", tuple(sorted((*ok, ("le", "2.56")))))] == 1
    assert (
        s[("gen_ai_server_time_to_first_token_seconds_bucket", tuple(sorted((*attrs, ("le", "0.25")))))] == 1
    )
    assert s[("gen_ai_server_time_per_output_token_seconds_sum", tuple(sorted(attrs)))] == pytest.approx(
        0.125
    )
    usage = "gen_ai_client_token_usage_sum"
    assert s[(usage, tuple(sorted((*attrs, ("gen_ai_token_type", "input")))))] == 10
    assert s[(usage, tuple(sorted((*attrs, ("gen_ai_token_type", "output")))))] == 11
    failed = dict(attrs) | {"gen_ai_response_model": "", "error_type": "503"}
    assert s[("gen_ai_server_request_duration_seconds_count", tuple(sorted(failed.items())))] == 1
    ttft_les = {dict(k)["le"] for n, k in s if n == "gen_ai_server_time_to_first_token_seconds_bucket"}
    assert ttft_les == {
        "0.001",
        "0.005",
        "0.01",
        "0.02",
        "0.04",
        "0.06",
        "0.08",
        "0.1",
        "0.25",
        "0.5",
        "0.75",
        "1.0",
        "2.5",
        "5.0",
        "7.5",
        "10.0",
        "+Inf",
    }


def test_pool_averages_and_standard_deviations() -> None:
    ds = Datastore(staleness_s=10.0)
    ds.set_endpoints(
        [Endpoint("a", "127.0.0.1", 1), Endpoint("b", "127.0.0.1", 2), Endpoint("c", "127.0.0.1", 3)]
    )
    m = EppMetrics(ds, clock=lambda: 100.0, pool_name="pool-1")
    ds.update_metrics("a", MetricsSnapshot(waiting=1, running=2, kv_cache_usage=0.2, scraped_at=99.9))
    ds.update_metrics("b", MetricsSnapshot(waiting=3, running=4, kv_cache_usage=0.6, scraped_at=99.9))
    s = samples(m.registry)
    pool = (("name", "pool-1"),)
    assert s[("llm_d_epp_average_queue_size", pool)] == 2
    assert s[("llm_d_epp_std_dev_queue_size", pool)] == 1
    assert s[("llm_d_epp_average_running_requests", pool)] == 3
    assert s[("llm_d_epp_std_dev_running_requests", pool)] == 1
    assert s[("llm_d_epp_average_kv_cache_utilization", pool)] == pytest.approx(0.4)
    assert s[("llm_d_epp_std_dev_kv_cache_utilization", pool)] == pytest.approx(0.2)
    assert s[("llm_d_epp_ready_endpoints", pool)] == 2  # c has no metrics yet
    assert s[("llm_d_epp_per_endpoint_queue_size", (("model_server_endpoint", "b"), ("name", "pool-1")))] == 3
    assert (
        "llm_d_epp_per_endpoint_queue_size",
        (("model_server_endpoint", "c"), ("name", "pool-1")),
    ) not in s


def test_scheduler_attempts_name_the_pick_and_drop_it_with_the_pod() -> None:
    ds = Datastore(staleness_s=1.0)
    ds.set_endpoints([Endpoint("a", "10.0.0.1", 8000)])
    m = EppMetrics(ds, namespace="ns")
    m.record_decision("LOAD_AWARE", "ok", 2e-5, None, "a")
    m.record_decision("LOAD_AWARE", "no_endpoints", 1e-5, None, None)
    s = samples(m.registry)
    key = (
        ("endpoint_name", "a"),
        ("namespace", "ns"),
        ("port", "8000"),
        ("status", "success"),
        ("target_model_name", ""),
    )
    assert s[("llm_d_epp_scheduler_attempts_total", key)] == 1
    failure = (
        ("endpoint_name", ""),
        ("namespace", ""),
        ("port", ""),
        ("status", "failure"),
        ("target_model_name", ""),
    )
    assert s[("llm_d_epp_scheduler_attempts_total", failure)] == 1
    assert s[("llm_d_epp_scheduler_e2e_duration_seconds_bucket", (("le", "2.5e-05"),))] == 2
    assert s[("llm_d_epp_request_processing_duration_seconds_count", ())] == 2
    ds.set_endpoints([])
    assert ("llm_d_epp_scheduler_attempts_total", key) not in samples(m.registry)


def test_capped_label_keeps_the_first_values_and_reserved_ones() -> None:
    cap = CappedLabel(3, reserved=["configured"])
    assert [cap(v) for v in ("a", "b", "a", "c", "d", "configured")] == [
        "a",
        "b",
        "a",
        "c",
        OTHER,
        "configured",
    ]
    assert len(cap) == 3
    cap.reserve(["late"])
    assert cap("late") == "late" and cap("e") == OTHER


def test_extproc_stream_families() -> None:
    registry = CollectorRegistry()
    m = RequestMetrics(registry)
    m.stream_started()
    m.stream_started()
    m.stream_finished("OK", 0.2)
    s = samples(registry)
    assert s[("llm_d_epp_extproc_streams_inflight", ())] == 1
    assert s[("llm_d_epp_extproc_streams_total", (("code", "OK"),))] == 1
    assert s[("llm_d_epp_extproc_stream_duration_seconds_sum", ())] == 0.2


MODEL = ("model_name", "target_model_name", "fairness_id", "priority")
