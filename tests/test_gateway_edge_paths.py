"""The gateway's allow-list of routes, and the smaller edge fixes: stream null, ids, headers, results."""

from __future__ import annotations

import asyncio
import gc
import logging

import orjson
import pytest

from epp.request import RequestError, request_id_from, stream_flag
from epp.routes import parse_routes
from gateway.server import GatewayOptions, build_gateway
from gateway.upstream import ENDPOINT_HEADER
from tests.test_gateway_edge_support import (
    CHAT_BODY,
    assert_still_serves,
    exchange,
    fleet_and_gateway,
    post,
)
from tests.test_gateway_support import (
    MODEL,
    assert_openai_error,
    chat,
    client_of,
    metric_value,
)

EXTRA_ROUTES = "POST /v1/chat/completions,POST /v1/completions,GET /v1/models,POST /v1/embeddings"


async def test_unlisted_paths_get_json_404_and_wrong_methods_json_405_with_allow() -> None:
    async with fleet_and_gateway() as gw, client_of(gw) as client:
        for path in ("/tokenize", "/sim/fault", "/v1/embeddings", "/v1/chat/completions/", "/load"):
            assert_openai_error(await client.post(path, json={"model": MODEL}), 404, "not_found")
        r = await client.get("/v1/chat/completions")
        assert_openai_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST"
        r = await client.post("/v1/models")
        assert_openai_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "GET"
        assert (await client.get("/v1/models")).status_code == 200
        await assert_still_serves(gw)


async def test_an_added_route_is_proxied_and_a_pods_4xx_is_labelled_pod_4xx(
    caplog: pytest.LogCaptureFixture,
) -> None:
    routes = parse_routes(EXTRA_ROUTES)
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with fleet_and_gateway(allowed_routes=routes) as gw, client_of(gw) as client:
        # The simulator has no /v1/embeddings: its 404 comes back through the gateway, from the picked pod.
        r = await client.post("/v1/embeddings", json={"model": MODEL, "prompt": "embed me"})
        assert r.status_code == 404
        assert ENDPOINT_HEADER.decode() in r.headers
        text = (await client.get("/metrics")).text
        assert metric_value(text, "epp_gateway_requests_total", route="/v1/embeddings", result="pod_4xx") == 1
        assert "route=/v1/embeddings" in caplog.text and "result=pod_4xx" in caplog.text
        # Neither `messages` nor `prompt` (nor any body): the gateway's own 400.
        assert_openai_error(await client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}), 400)
        assert_openai_error(await client.post("/v1/embeddings", content=b""), 400, "invalid_body")
        await assert_still_serves(gw)


def test_routes_the_gateway_cannot_serve_are_refused_at_build() -> None:
    for spec in ("GET /v1/embeddings", "POST /metrics"):
        with pytest.raises(ValueError, match="route"):
            build_gateway(GatewayOptions(port=0, allowed_routes=parse_routes(spec)), {})


def test_stream_flag_takes_null_as_false() -> None:
    assert stream_flag({"stream": None}) is False
    assert stream_flag({}) is False
    assert stream_flag({"stream": True}) is True
    bad: object
    for bad in ("yes", 1, 0, [], {}):
        with pytest.raises(RequestError) as info:
            stream_flag({"stream": bad})
        assert info.value.status == 400 and info.value.param == "stream"


async def test_stream_null_passes_the_gateway_and_non_booleans_are_its_400() -> None:
    async with fleet_and_gateway() as gw, client_of(gw) as client:
        # The gateway takes it as false and forwards it; the pod (like vLLM) answers in one piece.
        r = await client.post("/v1/chat/completions", json=chat("null stream", stream=None))
        assert r.status_code == 200 and ENDPOINT_HEADER.decode() in r.headers, r.text
        assert r.json()["choices"]
        error = assert_openai_error(
            await client.post("/v1/chat/completions", json=chat("x", stream="yes")), 400
        )
        assert error["param"] == "stream"
        await assert_still_serves(gw)


def test_request_id_keeps_safe_ids_and_replaces_unsafe_ones() -> None:
    assert request_id_from({"x-request-id": "abc-123_x.y:z"}) == "abc-123_x.y:z"
    for bad in ("a b", "id status=200 result=ok", "x\r\nforged", "é", "a" * 129, ""):
        generated = request_id_from({"x-request-id": bad})
        assert generated != bad and len(generated) == 32 and generated.isalnum()
    assert len(request_id_from({})) == 32


async def test_a_forged_request_id_cannot_add_access_log_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with fleet_and_gateway() as gw, client_of(gw) as client:
        forged = "x status=999 result=forged"
        r = await client.post("/v1/chat/completions", json=chat("forge"), headers={"x-request-id": forged})
        assert r.status_code == 200
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "gateway.access"]
        assert len(lines) == 1
        assert "forged" not in lines[0] and "status=999" not in lines[0]
        assert lines[0].count("status=") == 1
        await assert_still_serves(gw)


async def test_repeated_headers_are_kept_and_utf8_values_pass_unchanged() -> None:
    async with fleet_and_gateway() as gw:
        # The simulator echoes nothing back, so check what the pipeline saw: ParseStage's headers.
        seen: list[dict[str, str]] = []
        parse_stage = gw.pipeline.stages[0]
        original = parse_stage.run

        async def spy(ctx):
            seen.append(dict(ctx.headers))
            return await original(ctx)

        parse_stage.run = spy  # type: ignore[method-assign]
        extra = b"X-Tag: one\r\nX-Tag: two\r\nX-Name: " + "Zoë".encode() + b"\r\n"
        r = await exchange(gw, post("/v1/chat/completions", CHAT_BODY, extra))
        assert r.status == 200, r.body
        assert seen[0]["x-tag"] == "one, two"
        assert seen[0]["x-name"] == "Zoë"  # decoded as UTF-8: the upstream client re-encodes the same bytes
        r = await exchange(gw, post("/v1/chat/completions", CHAT_BODY, b"X-Bad: \xff\xfe\r\n"))
        assert r.status == 400
        assert r.error()["code"] == "invalid_header"
        await assert_still_serves(gw)


async def test_http11_without_host_is_400_and_http10_without_host_is_fine() -> None:
    async with fleet_and_gateway() as gw:
        body = CHAT_BODY
        raw = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        r = await exchange(gw, raw)
        assert r.status == 400 and r.error()["code"] == "invalid_host"
        raw = post("/v1/chat/completions", body, b"Host: second\r\n")
        r = await exchange(gw, raw)
        assert r.status == 400 and r.error()["code"] == "invalid_host"
        raw = b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        r = await exchange(gw, raw)
        assert r.status == 200, r.body
        await assert_still_serves(gw)


async def test_transfer_encodings_other_than_chunked_are_501() -> None:
    async with fleet_and_gateway() as gw:
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT_BODY), CHAT_BODY)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: %s\r\n\r\n"
        r = await exchange(gw, head % b"gzip, chunked" + chunked)
        assert r.status == 501 and r.error()["code"] == "unsupported_transfer_encoding"
        assert r.headers["connection"] == "close"
        r = await exchange(gw, head % b"chunked" + chunked)
        assert r.status == 200, r.body
        assert orjson.loads(r.body)["model"] == MODEL
        await assert_still_serves(gw)


async def test_malformed_requests_get_json_400() -> None:
    async with fleet_and_gateway() as gw:
        r = await exchange(gw, b"NOT HTTP AT ALL\r\n\r\n")
        assert r.status == 400 and r.error()["code"] == "invalid_http"
        await assert_still_serves(gw)


async def test_finished_requests_leave_no_cycles_for_the_garbage_collector() -> None:
    # Reference counting frees a request's context, lifecycle and reply as it ends; a cycle through them left
    # every request's whole object graph to the collector, CPU spent on every request.
    async with fleet_and_gateway() as gw:
        assert (await exchange(gw, post("/v1/chat/completions", CHAT_BODY))).status == 200  # warm
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            assert (await exchange(gw, post("/v1/chat/completions", CHAT_BODY))).status == 200
            assert (await exchange(gw, post("/v1/chat/completions", b"{not json"))).status == 400
            assert (
                await exchange(gw, post("/v1/chat/completions", CHAT_BODY, b"X-Bad: \xff\r\n"))
            ).status == 400
            await asyncio.sleep(0.2)  # the record step runs just after the answer's last byte
            gc.collect()
            kept = {type(o).__name__ for o in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert not kept & {"RequestContext", "RequestLifecycle", "ReplyStats", "MeteredReply"}, kept
