"""Both planes feed the picker's request families: the gateway's record step (its reply measured by
`watch`) and Envoy's access-log entries (OutcomeBook)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from envoy.data.accesslog.v3 import accesslog_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.datastore import Datastore
from epp.metrics import EppMetrics
from epp.request import ParsedRequest
from epp.request_metrics import RequestMetrics
from epp.scheduling.types import LLMRequest
from epp.servers.outcomes import OutcomeBook, entry_facts
from gateway.context import RequestContext
from gateway.metrics import GatewayMetrics
from gateway.record import RequestRecorder, provider_name
from tests.test_outcomes import routed, setup


def values(registry: CollectorRegistry, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class StreamReply:
    def __init__(self, parts: list[bytes]) -> None:
        self.status = 200
        self.headers = [(b"content-type", b"text/event-stream")]
        self._parts = parts
        self.last_chunk = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            yield part


def sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def test_the_gateway_record_step_measures_the_reply() -> None:
    epp = EppMetrics(Datastore(staleness_s=1.0))
    gateway = GatewayMetrics(epp.registry)
    assert gateway.picker is epp.requests  # one set of series for both
    clock = iter(float(i) / 10 for i in range(100))
    recorder = RequestRecorder(gateway, "LOAD_AWARE", clock=lambda: next(clock))
    ctx = RequestContext("/v1/chat/completions", {}, b'{"model": "m", "stream": true}')
    recorder.watch(ctx)
    ctx.parsed = ParsedRequest(LLMRequest("r1", "m", "m", "hi"), None)
    ctx.stream, ctx.status = True, 200
    parts = [
        sse({"model": "m-served", "choices": [{"delta": {"role": "assistant"}}]}),
        sse({"choices": [{"delta": {"content": "a"}}]}),
        sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
    ]
    reply = ctx.reply_hooks[0](StreamReply(parts))
    assert b"".join([c async for c in reply.chunks()]) == b"".join(parts)
    recorder.record(ctx, 1.0)
    r = epp.registry
    model = {"model_name": "m", "target_model_name": "m"}
    assert values(r, "llm_d_epp_request_total", **model) == 1
    assert values(r, "llm_d_epp_response_size_bytes_sum", **model) == sum(map(len, parts))
    assert values(r, "llm_d_epp_request_size_bytes_sum", **model) == len(ctx.body)
    assert values(r, "llm_d_epp_request_streaming_itl_seconds_count", **model) == 2
    assert values(r, "llm_d_epp_request_output_tokens_sum", **model) == 2
    assert values(r, "llm_d_epp_response_processing_duration_seconds_count") == 1
    genai = {"gen_ai_request_model": "m", "gen_ai_response_model": "m-served", "gen_ai_provider_name": "epp"}
    assert values(r, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **genai) == 5
    assert values(r, "gen_ai_server_request_duration_seconds_count", error_type="", **genai) == 1


def test_provider_names_follow_the_spec_for_known_hosts() -> None:
    assert provider_name("api.openai.com") == "openai"
    assert provider_name("my-resource.openai.azure.com") == "azure.ai.openai"
    assert provider_name("api.anthropic.com") == "anthropic"
    assert provider_name("llm.internal") == "llm.internal"


def access_entry(rid: str, status: int) -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.request.request_id = rid
    entry.request.request_body_bytes = 120
    entry.response.response_code.value = status
    entry.response.response_body_bytes = 900
    entry.common_properties.time_to_first_upstream_rx_byte.FromMilliseconds(250)
    entry.common_properties.time_to_last_downstream_tx_byte.FromMilliseconds(1500)
    return entry


def test_the_envoy_plane_counts_requests_from_their_access_log_entries() -> None:
    _, director, _, clock, _, _ = setup()
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    book = OutcomeBook(ttl_s=5.0, clock=clock, metrics=metrics)
    lc = routed(director, book, "r1")
    model = {"model_name": "m", "target_model_name": "m"}
    assert values(registry, "llm_d_epp_request_running", **model) == 1
    book.stream_ended(lc)
    entry = access_entry("r1", 503)
    assert book.resolve("r1", 503, lc.endpoint.address, entry_facts(entry))
    assert values(registry, "llm_d_epp_request_running", **model) == 0
    assert values(registry, "llm_d_epp_request_total", **model) == 1
    assert values(registry, "llm_d_epp_request_error_total", error_code="503", **model) == 1
    assert values(registry, "llm_d_epp_request_duration_seconds_sum", **model) == 1.5
    assert values(registry, "llm_d_epp_request_size_bytes_sum", **model) == 120
    assert values(registry, "llm_d_epp_response_size_bytes_sum", **model) == 900
    ok = routed(director, book, "r2")
    book.stream_ended(ok)
    assert book.resolve("r2", 200, ok.endpoint.address, entry_facts(access_entry("r2", 200)))
    assert values(registry, "llm_d_epp_request_ttft_seconds_sum", streaming="false", **model) == 0.25
    # An entry that never comes: no longer running, and not counted as a request it cannot describe.
    lost = routed(director, book, "r3")
    book.stream_ended(lost)
    clock.now += 10
    later = routed(director, book, "r4")
    book.stream_ended(later)  # expires what is past its TTL: r3
    assert values(registry, "llm_d_epp_request_running", **model) == 1  # r4 only
    assert values(registry, "llm_d_epp_request_total", **model) == 2
