"""Builders for the ext_proc ProcessingResponse messages epp sends to Envoy.

With pod credentials (epp.pod_auth) a routing answer also overwrites `authorization` with the pod key and
removes the client's `x-api-key`, so the client's credentials never reach a pod; without, they pass through.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2  # type: ignore[import-untyped]

from epp.picking import error_reply
from epp.pod_auth import PodCredentials

DESTINATION_HEADER = "x-gateway-destination-endpoint"
DESTINATION_METADATA_NAMESPACE = "envoy.lb"
SERVED_BY_HEADER = "x-epp-endpoint"  # the pod that answered: set by epp's gateway, and by Envoy's route
# Traffic documents behind Envoy (epp/envoy_gateway/traffic.py): epp's choice, read by the rendered routes,
# and the gRPC metadata that tells the upstream ext_proc filter which provider an attempt goes to.
PROVIDER_HEADER = "x-epp-provider"
RULE_HEADER = "x-epp-rule"
POOL_HEADER = "x-epp-pool"
UPSTREAM_METADATA_KEY = "x-epp-upstream"  # gRPC metadata of the upstream filter (and its header)
FROM_HEADER = "-"  # that metadata's value for an aggregate cluster: the provider is in the header

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def set_header(name: str, value: str) -> base_pb2.HeaderValueOption:
    # Envoy 1.40 reads raw_value only; overwrite so a client cannot pre-set the destination header itself.
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode()), append_action=_OVERWRITE
    )


def _destination_metadata(address: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.fields[DESTINATION_METADATA_NAMESPACE].struct_value.fields[
        DESTINATION_HEADER
    ].string_value = address
    return metadata


def _routing_common(
    address: str,
    new_body: bytes | None,
    pod_credentials: PodCredentials | None,
    pool_route: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> pb.CommonResponse:
    headers = [set_header(DESTINATION_HEADER, address), *(set_header(k, v) for k, v in extra)]
    if pool_route:  # an LLMRoute chose the local pool: the route host's POOL_HEADER route takes it
        headers.append(set_header(POOL_HEADER, "1"))
    removed: tuple[str, ...] = ()
    if pod_credentials is not None:
        headers.extend(set_header(name, value) for name, value in pod_credentials.set_headers())
        removed = pod_credentials.removed_headers()
    body_mutation = None
    if new_body is not None:
        headers.append(set_header("content-length", str(len(new_body))))
        body_mutation = pb.BodyMutation(body=new_body)
    return pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=headers, remove_headers=removed),
        body_mutation=body_mutation,
        clear_route_cache=True,
    )


def route_on_headers(address: str, pod_credentials: PodCredentials | None = None) -> pb.ProcessingResponse:
    """Answer to request headers of a bodyless request: route to `address` (with the pod key, if any)."""
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(response=_routing_common(address, None, pod_credentials)),
        dynamic_metadata=_destination_metadata(address),
    )


def route_on_body(
    address: str,
    new_body: bytes | None,
    pod_credentials: PodCredentials | None = None,
    pool_route: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> pb.ProcessingResponse:
    """Answer to the (last chunk of the) request body: route to `address`, replacing the body if rewritten
    (with the pod key, if any, and the `extra` request headers)."""
    common = _routing_common(address, new_body, pod_credentials, pool_route, extra)
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(response=common),
        dynamic_metadata=_destination_metadata(address),
    )


class RouteAnswers:
    """`route_on_body` answers that keep the body, built once per destination and reused.

    Such an answer depends only on its arguments, and building its protobuf messages cost more than the
    rest of the answer path (grpc serializes a message on each write and never changes it). Bounded: the
    cache starts afresh past `max_entries` destinations (a destination lists the pick and its fallbacks).
    """

    __slots__ = ("_answers", "_max_entries")

    def __init__(self, max_entries: int = 4096) -> None:
        self._answers: dict[tuple[object, ...], pb.ProcessingResponse] = {}
        self._max_entries = max_entries

    def on_body(
        self,
        address: str,
        pod_credentials: PodCredentials | None = None,
        pool_route: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> pb.ProcessingResponse:
        """`route_on_body(address, None, ...)`: a shared message, never to be modified."""
        key = (address, pod_credentials, pool_route, extra)
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= self._max_entries:
                self._answers.clear()
            answer = self._answers[key] = route_on_body(address, None, pod_credentials, pool_route, extra)
        return answer


def choose_provider(
    provider: str, rule: str | None, new_body: bytes | None = None, extra: tuple[tuple[str, str], ...] = ()
) -> pb.ProcessingResponse:
    """Answer to the request body: send it to `provider`'s route (the rule picks its routeSpecificConfig).

    Both headers are overwritten or removed, so a client cannot pick a provider or a rule itself."""
    headers = [set_header(PROVIDER_HEADER, provider), *(set_header(k, v) for k, v in extra)]
    removed = [POOL_HEADER]
    if rule is None:
        removed.append(RULE_HEADER)
    else:
        headers.append(set_header(RULE_HEADER, rule))
    body_mutation = None
    if new_body is not None:
        headers.append(set_header("content-length", str(len(new_body))))
        body_mutation = pb.BodyMutation(body=new_body)
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=headers, remove_headers=removed),
        body_mutation=body_mutation,
        clear_route_cache=True,
    )
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))


def provider_attempt(
    set_headers: dict[str, str], remove_headers: list[str], body: bytes | None
) -> pb.ProcessingResponse:
    """The upstream filter's answer: one attempt rewritten for its provider (None body: answer headers)."""
    headers = [set_header(k, v) for k, v in set_headers.items()]
    if body is None:
        mutation = pb.HeaderMutation(set_headers=headers, remove_headers=remove_headers)
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation))
        )
    headers.append(set_header("content-length", str(len(body))))
    mutation = pb.HeaderMutation(set_headers=headers, remove_headers=remove_headers)
    common = pb.CommonResponse(header_mutation=mutation, body_mutation=pb.BodyMutation(body=body))
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))


def immediate(status: int, body: bytes, details: str) -> pb.ProcessingResponse:
    """Answer the client directly (an error) with a JSON body; Envoy does not contact any upstream."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=pb.HeaderMutation(set_headers=[set_header("content-type", "application/json")]),
            body=body,
            details=details,
        )
    )


def error_answer(exc: Exception) -> pb.ProcessingResponse:
    """The OpenAI-style JSON error for `exc` as an ImmediateResponse."""
    reply = error_reply(exc)
    return immediate(reply.status, reply.body, f"epp_{reply.status}")


# CONTINUE answers carry nothing request-specific: built once and shared (grpc serializes each on write).
_CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
_CONTINUE_REQUEST_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())
_CONTINUE_REQUEST_TRAILERS = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
_CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
_CONTINUE_RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())
_CONTINUE_RESPONSE_TRAILERS = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


def continue_request_headers() -> pb.ProcessingResponse:
    """CONTINUE for request headers; a shared message, never to be modified."""
    return _CONTINUE_REQUEST_HEADERS


def continue_request_body() -> pb.ProcessingResponse:
    return _CONTINUE_REQUEST_BODY


def continue_request_trailers() -> pb.ProcessingResponse:
    return _CONTINUE_REQUEST_TRAILERS


def continue_response_headers() -> pb.ProcessingResponse:
    return _CONTINUE_RESPONSE_HEADERS


def continue_response_body() -> pb.ProcessingResponse:
    return _CONTINUE_RESPONSE_BODY


def continue_response_trailers() -> pb.ProcessingResponse:
    return _CONTINUE_RESPONSE_TRAILERS
