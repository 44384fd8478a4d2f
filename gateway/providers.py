"""The provider stage: requests whose Host matches an LLMRoute or LLMProvider go to the chosen provider.

Runs before parsing (a provider request needs no `model`: the provider's openAIConfig supplies it). A host
that is neither a route's nor a provider's, and a route backend naming an InferencePool, go on down the
pipeline to the picker. For a provider: the body gets the matched rule's `model`/`stream` (and
`stream_options.include_usage`, stripped again from the answer when the client did not ask), the path is
the provider's, the client's credentials are replaced by `Authorization: Bearer <apiKey>`, and the request
goes over HTTPS (verified, see epp.traffic.resolve.tls_context) through gateway.forward's attempt loop.
A rule's `timeout` bounds that loop (arrival to the answer's first byte, all attempts): past it the open
attempt counts as a timeout and the client gets a 504 JSON error.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable

from epp.config.traffic.config import TrafficConfig
from epp.config.traffic.policy import UpstreamTLS
from epp.request import RequestError
from epp.traffic.resolve import tls_context
from epp.traffic.routing import BodyError, RewrittenBody, Target, TrafficRouter, split_host
from gateway.asgi import error_body
from gateway.context import OUTCOME_UPSTREAM_FAILED, BytesReply, Reply, RequestContext
from gateway.forward import Outgoing, forward, forwardable_headers
from gateway.provider_attempts import ProviderAttempts, ProviderHealth
from gateway.traffic_metrics import TrafficMetrics
from gateway.upstream import UpstreamPool
from gateway.usage_strip import UsageStripper

# The client's credentials, dropped before a provider's own are set (unless passClientCredentials).
CLIENT_CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})


class ProviderStage:
    """Route by Host/:authority to a provider; None (go on) for other hosts and InferencePool backends."""

    name = "providers"

    def __init__(
        self,
        config: TrafficConfig,
        pool: UpstreamPool,
        metrics: TrafficMetrics,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        retry_on_fallback: bool = True,
    ) -> None:
        self._config = config
        self._router = TrafficRouter(config, rng)
        self._pool = pool
        self._metrics = metrics
        self.health = ProviderHealth(config, metrics, clock)
        self._retry = retry_on_fallback
        self._ssl: dict[UpstreamTLS, ssl.SSLContext] = {}  # built once: loading CAs costs milliseconds

    async def run(self, ctx: RequestContext) -> Reply | None:
        authority = ctx.headers.get("host", "")
        choice = self._router.choose(authority, ctx.headers, self.health.is_ejected_in)
        if choice is None:
            host, _ = split_host(authority)
            if host in self._config.routes:
                name = self._config.routes[host].metadata.name
                raise RequestError(
                    404, f"No rule of LLMRoute {name} matches this request.", code="no_matching_rule"
                )
            return None  # not a traffic host: the picker's
        if choice.target.provider is None:
            return None  # an InferencePool backend: parse, schedule and forward as usual
        if not ctx.body:
            raise RequestError(400, "Request body is empty.", code="invalid_body")
        attempts = ProviderAttempts(choice, self.health, self._metrics, ctx.started, self._retry)
        ctx.provider = attempts
        ctx.cleanups.append(attempts.close)
        rewritten: dict[str, RewrittenBody] = {}
        first = self._rewrite(attempts.target, ctx.body)  # a bad body is the client's 400, before any send
        ctx.stream = first.stream
        assert attempts.target.host is not None
        rewritten[attempts.target.host] = first
        client_headers = forwardable_headers(ctx.headers)
        client_auth = client_headers.get("authorization")
        for name in CLIENT_CREDENTIAL_HEADERS:
            client_headers.pop(name, None)

        def outgoing() -> Outgoing:
            target = attempts.target
            host = target.host
            assert host is not None
            body = rewritten.get(host)
            if body is None:
                body = rewritten[host] = self._rewrite(target, ctx.body)
            tls = self._config.upstream(host, choice.port).tls
            headers = {**client_headers, **target.upstream_headers(client_auth)}
            url = f"{tls.scheme}://{host}:{tls.default_port}{target.path_and_query()}"
            return Outgoing(url, headers, body.body, self._ssl_for(tls), tls.sni if tls.enabled else None)

        strip = None
        if first.stream and not first.client_asked_usage:
            strip = UsageStripper().feed
        sending = forward(ctx, attempts, self._pool.session, self._pool.timeouts.chunk_s, outgoing, strip)
        if choice.timeout_s is None:
            return await sending
        left = choice.timeout_s - (time.perf_counter() - ctx.started)
        try:
            async with asyncio.timeout(max(left, 0.0)):
                return await sending
        except TimeoutError:
            attempts.timed_out()
            ctx.result = OUTCOME_UPSTREAM_FAILED
            message = f"The provider did not answer within the route's timeout ({choice.timeout_s:g}s)."
            return BytesReply(504, error_body(504, message, "timeout", "api_error"))

    def _rewrite(self, target: Target, body: bytes) -> RewrittenBody:
        try:
            return target.rewrite(body)
        except BodyError as exc:
            raise RequestError(400, str(exc), code="invalid_body") from None

    def _ssl_for(self, tls: UpstreamTLS) -> ssl.SSLContext | bool:
        if not tls.enabled:
            return False
        ctx = self._ssl.get(tls)
        if ctx is None:
            ctx = self._ssl[tls] = tls_context(tls)
        return ctx
