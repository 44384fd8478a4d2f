"""The traffic documents in the ext_proc server: the choice (downstream filter) and each attempt's rewrite
(the provider clusters' upstream filter); the Envoy side is epp/envoy_gateway/traffic.py.

Downstream, a request whose `:authority` is a route's or provider's host gets its provider chosen by the
shared TrafficRouter (the same rules and weights as `epp gateway`) and answered with x-epp-provider and
x-epp-rule (which also select the rule's own Envoy route when it sets `timeout`/`retries`, see
epp/envoy_gateway/rules.py); its body is only checked here. Upstream, an attempt to provider P (named in the
stream's gRPC metadata) gets P's path and host, P's `model`/`stream` for the rule, and P's Authorization: so
a retry on a fallback provider carries the fallback's own model and key. Nothing here logs a header.
`replace()` swaps in reloaded documents (epp.config_reload) at once: each call reads them once, so a call
never mixes versions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.request import RequestError
from epp.servers import extproc_messages as msg
from epp.traffic.routing import BodyError, Choice, Target, TrafficRouter, split_host

# Client credentials never reach a provider unless its passClientCredentials says so (Authorization only).
_CLIENT_CREDENTIALS = ("authorization", "api-key", "x-api-key")
_INTERNAL = (
    msg.PROVIDER_HEADER,
    msg.RULE_HEADER,
    msg.POOL_HEADER,
    msg.DESTINATION_HEADER,
    msg.UPSTREAM_METADATA_KEY,
)


@dataclass
class _Version:
    """One version of the traffic documents and what is derived from it."""

    router: TrafficRouter
    hosts: frozenset[str]
    targets: dict[tuple[str, str | None], Target] = field(default_factory=dict)  # built on first use

    @classmethod
    def of(cls, router: TrafficRouter) -> _Version:
        return cls(router, frozenset({*router.config.routes, *router.config.providers}))


class TrafficProcessor:
    def __init__(self, router: TrafficRouter) -> None:
        self._version = _Version.of(router)

    @property
    def router(self) -> TrafficRouter:
        return self._version.router

    def replace(self, router: TrafficRouter) -> None:
        """Serve `router`'s documents from now on (a reload); calls already made keep the old ones."""
        self._version = _Version.of(router)

    def owns(self, headers: Mapping[str, str]) -> bool:
        """Whether the request is addressed to a route or provider host (else it takes the pool path)."""
        return split_host(_authority(headers))[0] in self._version.hosts

    def choose(self, headers: Mapping[str, str], body: bytes) -> Choice:
        """The Choice for a request `owns` accepted; RequestError (404 no rule matched, 400 bad body)."""
        choice = self._version.router.choose(_authority(headers), headers)
        if choice is None:
            raise RequestError(404, "No rule of this host's route matches the request.", code="no_route_rule")
        if choice.target.provider is not None:
            try:
                choice.target.rewrite(body)  # only checked: each attempt is rewritten for its own provider
            except BodyError as exc:
                raise RequestError(400, str(exc), code="invalid_body") from None
        return choice

    def attempt(self, provider: str, headers: Mapping[str, str], body: bytes | None) -> pb.ProcessingResponse:
        """The rewrite of one attempt to `provider` (None body: a bodyless request, headers only).

        `provider` FROM_HEADER: an aggregate (fallback) cluster's attempt, whose member Envoy named in the
        UPSTREAM_METADATA_KEY header (Envoy overwrites it, so a client cannot)."""
        if provider == msg.FROM_HEADER:
            provider = headers.get(msg.UPSTREAM_METADATA_KEY, "")
        target = self._target(provider, headers.get(msg.RULE_HEADER) or None)
        if target is None:
            raise RequestError(
                502, "The provider of this attempt is not configured.", code="unknown_provider"
            )
        assert target.provider is not None
        new_body = None
        if body is not None:
            try:
                new_body = target.rewrite(body).body
            except BodyError as exc:
                raise RequestError(400, str(exc), code="invalid_body") from None
        set_headers = {":path": target.path_and_query(), ":authority": target.provider.host}
        set_headers.update(target.upstream_headers(headers.get("authorization")))
        removed = [h for h in (*_INTERNAL, *_CLIENT_CREDENTIALS) if h not in set_headers]
        return msg.provider_attempt(set_headers, removed, new_body)

    def _target(self, host: str, rule: str | None) -> Target | None:
        version, key = self._version, (host, rule)
        target = version.targets.get(key)
        if target is None:
            provider = version.router.config.providers.get(host)
            if provider is None:
                return None
            target = version.targets[key] = Target(provider.spec, None, provider.spec.openai_for(rule))
        return target


def _authority(headers: Mapping[str, str]) -> str:
    return headers.get(":authority") or headers.get("host", "")


async def process_attempt(
    traffic: TrafficProcessor | None,
    provider: str,
    request_iterator: AsyncIterator[pb.ProcessingRequest],
    context: grpc.aio.ServicerContext[Any, Any],
) -> None:
    """The upstream filter's stream for one attempt to `provider`: rewrite it, then end the stream."""
    headers: dict[str, str] = {}
    chunks: list[bytes] = []
    async for request in request_iterator:
        kind = request.WhichOneof("request")
        body: bytes | None = None
        if kind == "request_headers":
            for hv in request.request_headers.headers.headers:
                headers[hv.key.lower()] = (
                    hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
                )
            if not request.request_headers.end_of_stream:
                await context.write(msg.continue_request_headers())
                continue
        elif kind == "request_body":
            chunks.append(request.request_body.body)
            if not (request.request_body.end_of_stream or request.request_body.end_of_stream_without_message):
                await context.write(msg.continue_request_body())
                continue
            body = b"".join(chunks)
        else:
            continue  # the filter sends nothing else (processing_mode skips the rest)
        if traffic is None:
            reply = msg.error_answer(
                RequestError(502, "Traffic documents are not loaded.", code="no_traffic_config")
            )
        else:
            try:
                reply = traffic.attempt(provider, headers, body)
            except RequestError as exc:
                reply = msg.error_answer(exc)
        await context.write(reply)
        return


def upstream_provider(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The provider an upstream filter's stream is for (its gRPC metadata), None for the listener's."""
    for key, value in context.invocation_metadata() or ():
        if key == msg.UPSTREAM_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return None
