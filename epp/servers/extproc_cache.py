"""The response cache in the ext_proc server (epp.cache.front), the Envoy plane of the cache stage.

On request headers a request the cache selects (host_match / path_match) gets a `mode_override`: Envoy is to
send this request's response headers and its body (STREAMED: chunks as they come, none held back) — other
requests keep the default modes and today's cost. On the request body the cache decides: a hit becomes an
ImmediateResponse (the JSON answer, or the SSE events of a streaming request); a miss is routed as usual
and its answer fed to an AnswerRecorder chunk by chunk as Envoy relays it (each answered with CONTINUE at
once); a bypass is routed as usual and the stream ends after routing as any other. The `x-epp-cache` status
travels as a request header that the rendered route copies onto the response (`%REQ(x-epp-cache)%`, see
epp/envoy_gateway/config.py); a client's own `x-epp-cache` header is removed first.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from epp.cache.front import Begun, CacheFront
from epp.cache.types import CACHE_HEADER
from epp.servers import extproc_messages as msg

_OBSERVE_RESPONSE = mode_pb.ProcessingMode(
    request_header_mode=mode_pb.ProcessingMode.SEND,
    request_body_mode=mode_pb.ProcessingMode.BUFFERED,
    request_trailer_mode=mode_pb.ProcessingMode.SKIP,
    response_header_mode=mode_pb.ProcessingMode.SEND,
    response_body_mode=mode_pb.ProcessingMode.STREAMED,
    response_trailer_mode=mode_pb.ProcessingMode.SKIP,
)
_SELECTED = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse(
        response=pb.CommonResponse(header_mutation=pb.HeaderMutation(remove_headers=[CACHE_HEADER]))
    ),
    mode_override=_OBSERVE_RESPONSE,
)
_NOT_SELECTED = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse(
        response=pb.CommonResponse(header_mutation=pb.HeaderMutation(remove_headers=[CACHE_HEADER]))
    )
)


class ExtProcCache:
    """The cache stage for ext_proc streams."""

    def __init__(self, front: CacheFront) -> None:
        self.front = front

    def on_request_headers(self, headers: Mapping[str, str]) -> tuple[bool, pb.ProcessingResponse]:
        """(selected, the answer to the request headers); shared messages, never to be modified."""
        selected = self.front.selects(headers.get(":authority", ""), headers.get(":path", ""))
        return selected, _SELECTED if selected else _NOT_SELECTED

    async def on_request_body(self, headers: Mapping[str, str], path: str, body: bytes) -> Begun:
        """Raises RequestError (a bad `cache` object; fail-closed, an outage)."""
        return await self.front.begin(path.split("?", 1)[0], headers, body)


def hit_response(begun: Begun) -> pb.ProcessingResponse:
    """The cached answer, sent by Envoy without contacting any upstream."""
    hit = begun.hit
    assert hit is not None
    headers = [msg.set_header(k.decode(), v.decode()) for k, v in hit.headers]
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=hit.status),
            headers=pb.HeaderMutation(set_headers=headers),
            body=b"".join(hit.chunks),
            details=f"epp_cache_{begun.status.replace('-', '_')}",
        )
    )


def response_started(begun: Begun, http_headers: pb.HttpHeaders) -> None:
    """The pod's (or Envoy's) response headers: whether the answer may be kept."""
    recorder = begun.recorder
    if recorder is None:
        return
    status, content_type, encoding = 0, "", ""
    for hv in http_headers.headers.headers:
        value = hv.raw_value.decode("latin-1") if hv.raw_value else hv.value
        if hv.key == ":status":
            status = int(value or 0)
        elif hv.key == "content-type":
            content_type = value
        elif hv.key == "content-encoding":
            encoding = value
    recorder.response_started(status, content_type, encoding)
    if http_headers.end_of_stream:
        recorder.finish(True)


def response_body(begun: Begun, body: pb.HttpBody) -> None:
    recorder = begun.recorder
    if recorder is None:
        return
    recorder.feed(body.body)
    if body.end_of_stream or body.end_of_stream_without_message:
        recorder.finish(True)
