"""The ext_proc gRPC server over loopback with a grpc.aio client playing Envoy."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf.internal import api_implementation  # type: ignore[import-untyped]

from epp.datastore import Datastore, Endpoint, MetricsSnapshot
from epp.requestcontrol.director import Director, DirectorSettings
from epp.scheduling.profile import assemble_profile
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import Criticality, LLMRequest, SchedulingResult
from epp.servers.extproc import ExtProcServer, SlowProtobufError, require_fast_protobuf
from epp.servers.outcomes import OutcomeBook
from scorers.least_request_scorer import LeastRequestScorer
from scorers.max_score_picker import MaxScorePicker
from scorers.saturation_filter import SaturationFilter
from tests.test_request_parse import DictResolver, ModelSpec
from tests.test_request_picking import ListRecorder

DEST = "x-gateway-destination-endpoint"


def snapshot(waiting: int = 0) -> MetricsSnapshot:
    return MetricsSnapshot(waiting=waiting, running=0, kv_cache_usage=0.1, scraped_at=time.monotonic())


@dataclass
class Harness:
    ds: Datastore
    stub: Any
    recorder: ListRecorder
    book: OutcomeBook

    def in_flight(self) -> dict[str, int]:
        return {s.endpoint.name: s.in_flight for s in self.ds.states()}

    def address_of_busy(self) -> str:
        [busy] = [s.endpoint.address for s in self.ds.states() if s.in_flight == 1]
        return busy


async def _serve(
    scheduler_factory: Callable[[Datastore], Any] | None = None,
    fallback_endpoints: int = 0,
    end_after_route: bool = False,
) -> AsyncIterator[Harness]:
    ds = Datastore(staleness_s=600)
    ds.set_endpoints([Endpoint("pod-a", "10.0.0.1", 8000), Endpoint("pod-b", "10.0.0.2", 8001)])
    ds.update_metrics("pod-a", snapshot())
    ds.update_metrics("pod-b", snapshot())
    rng = random.Random(3)
    if scheduler_factory is None:
        profile = assemble_profile(
            "default",
            [(SaturationFilter(), 1.0), (LeastRequestScorer(), 1.0), (MaxScorePicker(rng=rng), 1.0)],
        )
        scheduler: Any = Scheduler(ds, profile)
    else:
        scheduler = scheduler_factory(ds)
    resolver = DictResolver(
        {
            "base": ModelSpec(),
            "food": ModelSpec(target_models=["food-lora"]),
            "bulk": ModelSpec(Criticality.SHEDDABLE),
        }
    )
    recorder = ListRecorder()
    service = Director(scheduler, ds, resolver, recorder, rng, DirectorSettings("least-request"))
    # These tests drive the stream-kept-open mode; test_envoy_edge.py and the test below the default.
    server = ExtProcServer(
        service,
        "127.0.0.1",
        0,
        max_body_bytes=4096,
        fallback_endpoints=fallback_endpoints,
        end_after_route=end_after_route,
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Harness(ds, pb_grpc.ExternalProcessorStub(channel), recorder, server.outcomes)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async for harness in _serve():
        yield harness


def headers_msg(path: str, method: str = "POST", eos: bool = False, **extra: str) -> pb.ProcessingRequest:
    values = [
        base_pb2.HeaderValue(key=":path", raw_value=path.encode()),
        base_pb2.HeaderValue(key=":method", raw_value=method.encode()),
    ]
    # Older Envoys put values in `value`; epp must read both.
    values += [base_pb2.HeaderValue(key=k.replace("_", "-"), value=v) for k, v in extra.items()]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=eos)
    )


def body_msg(data: bytes, eos: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def chat(model: str = "base") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]})


def set_headers(common: pb.CommonResponse) -> dict[str, bytes]:
    return {o.header.key: o.header.raw_value for o in common.header_mutation.set_headers}


def metadata_endpoint(resp: pb.ProcessingResponse) -> str:
    value: str = resp.dynamic_metadata.fields["envoy.lb"].struct_value.fields[DEST].string_value
    return value


async def exchange(call: Any, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
    await call.write(request)
    response: pb.ProcessingResponse = await call.read()
    return response


async def wait_released(h: Harness) -> None:
    for _ in range(200):
        if all(v == 0 for v in h.in_flight().values()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"in-flight never went back to 0: {h.in_flight()}")


def error_of(resp: pb.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    assert resp.WhichOneof("response") == "immediate_response"
    imm = resp.immediate_response
    assert set_headers(pb.CommonResponse(header_mutation=imm.headers))["content-type"] == b"application/json"
    return imm.status.code, orjson.loads(imm.body)["error"]


def test_protobuf_is_upb() -> None:
    assert api_implementation.Type() == "upb"
    assert require_fast_protobuf() == "upb"


async def test_refuses_pure_python_protobuf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_implementation, "Type", lambda: "python")
    ds = Datastore()
    service = Director(
        Scheduler(ds, assemble_profile("p", [(MaxScorePicker(), 1.0)])),
        ds,
        None,
        ListRecorder(),
        random.Random(),
        DirectorSettings("x"),
    )
    server = ExtProcServer(service)
    with pytest.raises(SlowProtobufError, match="upb"):
        await server.start()


async def test_buffered_body_is_routed_and_released_on_response_end(h: Harness) -> None:
    call = h.stub.Process()
    first = await exchange(call, headers_msg("/v1/chat/completions", x_request_id="rid-1"))
    assert first.WhichOneof("response") == "request_headers"
    assert not first.request_headers.response.header_mutation.set_headers
    resp = await exchange(call, body_msg(chat()))
    assert resp.WhichOneof("response") == "request_body"
    common = resp.request_body.response
    assert common.clear_route_cache
    assert not common.HasField("body_mutation")
    address = h.address_of_busy()  # in flight is 1 on exactly the picked endpoint
    assert set_headers(common) == {DEST: address.encode()}
    assert (
        common.header_mutation.set_headers[0].append_action
        == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    assert metadata_endpoint(resp) == address
    assert h.recorder.decisions[-1][1] == "ok"

    rh = await exchange(call, pb.ProcessingRequest(response_headers=pb.HttpHeaders()))
    assert rh.WhichOneof("response") == "response_headers"
    assert sum(h.in_flight().values()) == 1  # response still streaming
    rb = await exchange(call, pb.ProcessingRequest(response_body=pb.HttpBody(body=b"x", end_of_stream=True)))
    assert rb.WhichOneof("response") == "response_body"
    assert sum(h.in_flight().values()) == 0
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert sum(h.in_flight().values()) == 0  # released exactly once


async def test_model_rewrite_mutates_body_and_content_length(h: Harness) -> None:
    call = h.stub.Process()
    await exchange(call, headers_msg("/v1/chat/completions"))
    resp = await exchange(call, body_msg(chat("food")))
    common = resp.request_body.response
    new_body = common.body_mutation.body
    assert orjson.loads(new_body) == {
        "model": "food-lora",
        "messages": [{"role": "user", "content": "hello"}],
    }
    headers = set_headers(common)
    assert headers["content-length"] == str(len(new_body)).encode()
    assert headers[DEST] == h.address_of_busy().encode()
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert sum(h.in_flight().values()) == 0  # stream end releases


async def test_streamed_body_chunks_are_accumulated(h: Harness) -> None:
    data = chat()
    call = h.stub.Process()
    await exchange(call, headers_msg("/v1/chat/completions"))
    for chunk in (data[:10], data[10:20]):
        resp = await exchange(call, body_msg(chunk, eos=False))
        assert resp.WhichOneof("response") == "request_body"
        assert not resp.request_body.response.header_mutation.set_headers
    assert sum(h.in_flight().values()) == 0
    resp = await exchange(call, body_msg(data[20:], eos=True))
    assert set_headers(resp.request_body.response)[DEST] == h.address_of_busy().encode()
    await call.done_writing()
    await call.read()


async def test_headers_only_request_is_routed_on_headers(h: Harness) -> None:
    call = h.stub.Process()
    resp = await exchange(call, headers_msg("/v1/models", method="GET", eos=True))
    assert resp.WhichOneof("response") == "request_headers"
    common = resp.request_headers.response
    address = h.address_of_busy()
    assert set_headers(common) == {DEST: address.encode()}
    assert common.clear_route_cache and metadata_endpoint(resp) == address
    rh = await exchange(call, pb.ProcessingRequest(response_headers=pb.HttpHeaders(end_of_stream=True)))
    assert rh.WhichOneof("response") == "response_headers"
    assert sum(h.in_flight().values()) == 0
    await call.done_writing()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{oops", 400, "invalid_json"),
        (orjson.dumps({"model": "base"}), 400, None),
        (chat("nope"), 404, "model_not_found"),
        (b"x" * 5000, 413, "body_too_large"),
    ],
)
async def test_bad_requests_get_immediate_json_errors(
    h: Harness, body: bytes, status: int, code: str | None
) -> None:
    call = h.stub.Process()
    await exchange(call, headers_msg("/v1/chat/completions"))
    status_got, error = error_of(await exchange(call, body_msg(body)))
    assert (status_got, error["code"]) == (status, code)
    if status == 404:
        assert error["message"] == "The model `nope` does not exist."
    assert sum(h.in_flight().values()) == 0
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def test_shed_is_429(h: Harness) -> None:
    for name in ("pod-a", "pod-b"):
        h.ds.update_metrics(name, snapshot(waiting=100))
    call = h.stub.Process()
    await exchange(call, headers_msg("/v1/chat/completions"))
    status, error = error_of(await exchange(call, body_msg(chat("bulk"))))
    assert (status, error["code"]) == (429, "request_shed")
    assert h.recorder.decisions[-1][1] == "shed"
    assert sum(h.in_flight().values()) == 0
    await call.done_writing()


async def test_no_endpoint_is_503(h: Harness) -> None:
    h.ds.set_endpoints([])
    call = h.stub.Process()
    status, error = error_of(await exchange(call, headers_msg("/v1/models", method="GET", eos=True)))
    assert (status, error["code"]) == (503, "no_endpoint")
    await call.done_writing()


async def test_unexpected_error_is_generic_503() -> None:
    class Broken:
        def schedule(self, request: LLMRequest, profile: str | None = None) -> SchedulingResult:
            raise ZeroDivisionError("internal detail")

    async for harness in _serve(lambda ds: Broken()):
        call = harness.stub.Process()
        await exchange(call, headers_msg("/v1/chat/completions"))
        status, error = error_of(await exchange(call, body_msg(chat())))
        assert status == 503 and "internal detail" not in error["message"]
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF


async def test_cancelled_stream_releases_in_flight(h: Harness) -> None:
    call = h.stub.Process()
    await exchange(call, headers_msg("/v1/chat/completions"))
    await exchange(call, body_msg(chat()))
    assert sum(h.in_flight().values()) == 1
    call.cancel()
    await wait_released(h)


async def test_closing_stream_after_pick_releases(h: Harness) -> None:
    call = h.stub.Process()
    await exchange(call, headers_msg("/v1/chat/completions"))
    await exchange(call, body_msg(chat()))
    await exchange(call, pb.ProcessingRequest(response_headers=pb.HttpHeaders()))
    assert sum(h.in_flight().values()) == 1
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert sum(h.in_flight().values()) == 0


async def test_concurrent_streams_count_separately(h: Harness) -> None:
    calls = [h.stub.Process() for _ in range(4)]
    for call in calls:
        await exchange(call, headers_msg("/v1/chat/completions"))
        await exchange(call, body_msg(chat()))
    assert sum(h.in_flight().values()) == 4
    for call in calls:
        await call.done_writing()
        await call.read()
    assert sum(h.in_flight().values()) == 0


async def test_fallback_endpoints_follow_the_pick_in_score_order() -> None:
    async for h in _serve(fallback_endpoints=2):
        h.ds.update_metrics("pod-a", snapshot(waiting=3))  # least-request prefers pod-b, pod-a comes second
        call = h.stub.Process()
        await exchange(call, headers_msg("/v1/chat/completions"))
        resp = await exchange(call, body_msg(chat()))
        expected = "10.0.0.2:8001,10.0.0.1:8000"  # only two pods: N=2 lists every other candidate once
        assert set_headers(resp.request_body.response)[DEST] == expected.encode()
        assert metadata_endpoint(resp) == expected
        assert h.in_flight() == {"pod-a": 0, "pod-b": 1}  # only the pick counts as in flight
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        await wait_released(h)


async def test_unroutable_pods_are_not_fallbacks() -> None:
    async for h in _serve(fallback_endpoints=1):
        h.ds.record_scrape_failure("pod-b", "connection refused")  # unreachable: not a candidate
        call = h.stub.Process()
        resp = await exchange(call, headers_msg("/v1/models", method="GET", eos=True))
        assert set_headers(resp.request_headers.response)[DEST] == b"10.0.0.1:8000"
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        await wait_released(h)


async def test_negative_fallback_count_is_refused() -> None:
    ds = Datastore()
    service = Director(
        Scheduler(ds, assemble_profile("p", [(MaxScorePicker(), 1.0)])),
        ds,
        None,
        ListRecorder(),
        random.Random(),
        DirectorSettings("x"),
    )
    with pytest.raises(ValueError, match="fallback_endpoints"):
        ExtProcServer(service, fallback_endpoints=-1)


async def test_default_ends_the_stream_after_routing_and_keeps_the_pick_in_flight() -> None:
    """epp closes the stream once routed (a picker restart cannot fail the request); the access-log entry,
    not the stream's end, releases the in-flight count."""
    async for h in _serve(end_after_route=True):
        # No access log connected yet: the stream stays open, its end is the only sign the request is over.
        call = h.stub.Process()
        await exchange(call, headers_msg("/v1/chat/completions", x_request_id="rid-open"))
        routed = await exchange(call, body_msg(chat()))
        assert routed.WhichOneof("response") == "request_body"
        assert sum(h.in_flight().values()) == 1
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert sum(h.in_flight().values()) == 0
        h.book.access_log_streams = 1  # as while Envoy's access-log stream is open
        call = h.stub.Process()
        await exchange(call, headers_msg("/v1/chat/completions", x_request_id="rid-end"))
        routed = await exchange(call, body_msg(chat()))
        assert routed.WhichOneof("response") == "request_body"
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        assert sum(h.in_flight().values()) == 1  # still in flight: the request goes on in Envoy


async def test_finished_streams_leave_no_cycles_for_the_garbage_collector(h: Harness) -> None:
    # A done callback on the gRPC context is kept in the RPC's state, bound to the context: a cycle that
    # left every stream's objects (and the RPC's) to the collector.
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for cancel in (False, True):
            call = h.stub.Process()
            await exchange(call, headers_msg("/v1/chat/completions"))
            await exchange(call, body_msg(chat()))
            if cancel:
                call.cancel()
            else:
                await exchange(call, pb.ProcessingRequest(response_headers=pb.HttpHeaders()))
                await call.done_writing()
                assert await call.read() == grpc.aio.EOF
            await wait_released(h)
        await asyncio.sleep(0.1)
        gc.collect()
        kept = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not kept & {"ProcessStream", "RequestLifecycle"}, kept
